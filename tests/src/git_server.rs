//! A git server over HTTP for tests and the demo: `git http-backend` (CGI)
//! behind a small actix-web bridge, serving bare repositories from a
//! temporary directory at `http://127.0.0.1:<port>/git/<owner>/<name>.git`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use tokio::io::AsyncWriteExt;

pub struct GitServer {
    pub base_url: String,
    pub root: PathBuf,
    server: actix_web::dev::ServerHandle,
}

impl GitServer {
    pub async fn start() -> Self {
        let root = std::env::temp_dir().join(format!("paddock-git-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&root).expect("git root");
        let data = web::Data::new(root.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(64 << 20))
                .route("/git/{path:.*}", web::to(cgi))
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .expect("bind git server");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self { base_url: format!("http://127.0.0.1:{port}/git"), root, server: handle }
    }

    /// Creates `owner/name` with one commit on `main` holding `files`.
    pub fn create_repo(&self, owner: &str, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
        create_bare_repo(&self.root, owner, name, files)
    }

    pub async fn stop(&self) {
        self.server.stop(false).await;
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.root).ok();
    }
}

/// Creates the bare repository `<root>/<owner>/<name>.git` with one commit
/// on `main` holding `files`.
pub fn create_bare_repo(root: &Path, owner: &str, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let work = root.join(format!("work-{owner}-{name}"));
    std::fs::create_dir_all(&work).expect("work dir");
    git(&work, &["init", "-q", "-b", "main"]);
    for (path, content) in files {
        let file = work.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(file, content).expect("write file");
    }
    git(&work, &["add", "-A"]);
    git(&work, &["-c", "user.name=Test", "-c", "user.email=test@example.com", "commit", "-q", "-m", "initial"]);
    let bare = root.join(owner).join(format!("{name}.git"));
    std::fs::create_dir_all(bare.parent().expect("owner dir")).expect("owner dir");
    git(root, &["clone", "-q", "--bare", work.to_str().expect("utf8"), bare.to_str().expect("utf8")]);
    std::fs::remove_dir_all(&work).ok();
    bare
}

pub fn git(dir: &Path, args: &[&str]) {
    let status = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdout(Stdio::null())
        .status()
        .expect("run git");
    assert!(status.success(), "git {args:?} failed in {}", dir.display());
}

async fn cgi(req: HttpRequest, body: web::Bytes, root: web::Data<PathBuf>) -> HttpResponse {
    let path = format!("/{}", req.match_info().query("path"));
    http_backend(&root, &path, &req, body).await
}

/// Runs `git http-backend` for one request on the repositories under `root`.
pub async fn http_backend(root: &Path, path: &str, req: &HttpRequest, body: web::Bytes) -> HttpResponse {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root.as_os_str())
        .env("REMOTE_USER", "x-access-token")
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("PATH_INFO", path)
        .env("REQUEST_METHOD", req.method().as_str())
        .env("QUERY_STRING", req.query_string())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let Ok(mut child) = cmd.spawn() else {
        return HttpResponse::InternalServerError().finish();
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body).await;
    }
    let Ok(output) = child.wait_with_output().await else {
        return HttpResponse::InternalServerError().finish();
    };
    let out = output.stdout;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    let split = split.or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, sep)) = split else {
        return HttpResponse::InternalServerError().finish();
    };
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let mut response = HttpResponse::Ok();
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().and_then(|c| c.parse().ok()).unwrap_or(500);
            response.status(actix_web::http::StatusCode::from_u16(code).unwrap_or_default());
        } else {
            response.insert_header((name.trim().to_owned(), value.to_owned()));
        }
    }
    response.body(out[end + sep..].to_vec())
}
