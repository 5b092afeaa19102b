//! Placeholder until the benchmarks issue: exits non-zero so no one mistakes
//! it for a benchmark run.

fn main() -> std::process::ExitCode {
    eprintln!("loadtests: no benchmarks yet; see loadtests/README.md");
    std::process::ExitCode::from(2)
}
