"""Structural checks of the Terraform module where `terraform validate`
cannot run (no Terraform binary or AWS provider can be downloaded on the
machines this project is built on): every file parses as HCL2
(python-hcl2); every `var.`, `local.`, `data.` and resource reference
names something declared; every variable has a description and a type;
every module call passes each required variable and no unknown one; every
`templatefile` names a file that exists and gets every variable it uses;
and the layout rules of `terraform fmt` that can be checked without it
(two-space indentation by nesting, no tabs or trailing spaces, one space
after `=`, the `=` of adjacent one-line attributes aligned). This is not
`terraform fmt -check`: its full rules need Terraform itself.

Usage: python3 check.py <dir with aws/ and examples/>; exit 1 on a finding.
"""

import glob
import os
import re
import sys

import hcl2


def load(path):
    with open(path) as f:
        return hcl2.load(f)


def blocks(doc, kind):
    for item in doc.get(kind, []):
        yield item


def module_declarations(directory):
    variables, locals_, resources, datas, outputs = {}, set(), set(), set(), set()
    texts = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.tf"))):
        doc = load(path)
        with open(path) as f:
            texts[path] = f.read()
        for item in blocks(doc, "variable"):
            for name, body in item.items():
                variables[name] = {k: v for k, v in body.items() if not k.startswith("__")}
        for item in blocks(doc, "locals"):
            locals_.update(item.keys())
        for item in blocks(doc, "resource"):
            for kind, named in item.items():
                for name in named:
                    resources.add(f"{kind}.{name}")
        for item in blocks(doc, "data"):
            for kind, named in item.items():
                for name in named:
                    datas.add(f"{kind}.{name}")
        for item in blocks(doc, "output"):
            outputs.update(item.keys())
    return variables, locals_, resources, datas, outputs, texts


REFERENCE = re.compile(r"(?<![\w.])(var|local|data|aws_[a-z0-9_]+|random_[a-z0-9_]+)\.([a-z0-9_]+)(?:\.([a-z0-9_]+))?")


def check_module(directory, findings):
    variables, locals_, resources, datas, outputs, texts = module_declarations(directory)
    code_text = "\n".join(texts.values())
    for name, body in variables.items():
        if f"var.{name}" not in code_text:
            findings.append(f"{directory}: variable {name} is declared but never used")
        for needed in ("description", "type"):
            if needed not in body:
                findings.append(f"{directory}: variable {name} has no {needed}")
    for path, text in texts.items():
        code = "\n".join(line.split("#", 1)[0] if not line.lstrip().startswith("description") else "" for line in text.splitlines())
        for kind, first, second in REFERENCE.findall(code):
            if kind == "var" and first not in variables:
                findings.append(f"{path}: var.{first} is not declared")
            elif kind == "local" and first not in locals_:
                findings.append(f"{path}: local.{first} is not defined")
            elif kind == "data" and f"{first}.{second}" not in datas:
                findings.append(f"{path}: data.{first}.{second} is not declared")
            elif kind.startswith(("aws_", "random_")) and f"{kind}.{first}" not in resources:
                findings.append(f"{path}: {kind}.{first} is not declared")
        for template, arguments in re.findall(r'templatefile\("\$\{path\.module\}/([^"]+)",\s*(\{.*?\}\)|local\.[a-z_]+)', text, re.S):
            file = os.path.join(directory, template)
            if not os.path.isfile(file):
                findings.append(f"{path}: templatefile {template} does not exist")
                continue
            with open(file) as f:
                used = template_variables(f.read())
            given = set(re.findall(r"^\s*([a-z_]+)\s*=", arguments, re.M))
            if arguments.startswith("local."):
                given = set(re.findall(r"^\s{4}([a-z_]+)\s*=", text.split("config_vars = {", 1)[1].split("}", 1)[0], re.M))
            functions = {"indent", "jsonencode", "base64encode"}
            missing = used - given - functions
            if missing:
                findings.append(f"{path}: {template} uses {sorted(missing)} which the call does not pass")
    return variables, outputs


KEYWORDS = {"if", "else", "endif", "for", "in", "endfor", "true", "false", "null"}


def template_variables(text):
    """Every variable a template's interpolations and directives name
    (function names, attribute names after a dot, literals and keywords
    aside)."""
    used = set()
    for expr in re.findall(r"(?<![$%])[$%]\{~?(.*?)~?\}", text):
        expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
        for name in re.findall(r"(?<![\w.])([a-z_][a-z0-9_]*)\b(?!\s*\()", expr):
            if name not in KEYWORDS:
                used.add(name)
    return used


def render_template(text, values):
    """The subset of Terraform's template language the module's templates
    use: ${name}, ${name.attr}, ${indent(n, name)}, %{ if cond }..%{ else }..
    %{ endif } with ~ strip markers, $${ and %%{ escapes."""
    def value(expr):
        expr = expr.strip()
        call = re.fullmatch(r"indent\((\d+),\s*([a-z_.]+)\)", expr)
        if call:
            n, name = int(call.group(1)), call.group(2)
            lines = str(lookup(name)).split("\n")
            return "\n".join([lines[0]] + [(" " * n + l) if l else l for l in lines[1:]])
        return lookup(expr)

    def lookup(name):
        node = values
        for part in name.split("."):
            node = node[part]
        if isinstance(node, bool):
            return "true" if node else "false"
        return node

    def truth(cond):
        python = cond.replace("&&", " and ").replace("||", " or ")
        python = re.sub(r"!(?!=)", " not ", python)
        env = {k: v for k, v in values.items() if not isinstance(v, dict)}
        return bool(eval(python, {"__builtins__": {}}, env))

    tokens = re.split(r"(%\{~?.*?~?\})", text)
    out, stack = [], [True]
    strip_next = False
    for token in tokens:
        directive = re.fullmatch(r"%\{(~?)\s*(.*?)\s*(~?)\}", token)
        if directive and not token.startswith("%%"):
            left, body, right = directive.groups()
            if left and out:
                out[-1] = out[-1].rstrip()
            if body.startswith("if "):
                stack.append(stack[-1] and truth(body[3:]))
            elif body == "else":
                parent = stack[-2] if len(stack) > 1 else True
                stack[-1] = parent and not stack[-1]
            elif body == "endif":
                stack.pop()
            strip_next = bool(right)
            continue
        if strip_next:
            token = token.lstrip(" \t")
            if token.startswith("\n"):
                token = token[1:]
            strip_next = False
        if stack[-1]:
            out.append(token)
    rendered = "".join(out)
    rendered = re.sub(r"(?<!\$)\$\{(.*?)\}", lambda m: str(value(m.group(1))), rendered)
    return rendered.replace("$${", "${").replace("%%{", "%{")


def check_cloud_init(module_dir, findings):
    import yaml

    with open(os.path.join(module_dir, "templates", "cloud-init.yaml.tftpl")) as f:
        template = f.read()
    config = "[worker]\nwork_dir = \"/var/lib/paddock/worker\"\n"
    for role, gvisor, metrics in [("api", False, True), ("worker", True, False), ("worker", False, False)]:
        values = {
            "role": role, "package": f"paddock-{role}", "version": "0.1.0", "packages": "acme-artifacts/paddock",
            "region": "eu-west-1", "redis_secret": "arn:redis", "env_secret": "arn:env", "config": config,
            "gvisor": gvisor, "metrics": metrics, "namespace": "Paddock", "metric": "QueueDemand",
            "group": f"paddock-{role}",
        }
        what = f"cloud-init ({role}, gvisor={gvisor})"
        try:
            rendered = render_template(template, values)
            document = yaml.safe_load(rendered)
        except Exception as e:  # noqa: BLE001 - any failure is a finding
            findings.append(f"{what}: does not render to YAML: {e}")
            continue
        if not rendered.startswith("#cloud-config\n"):
            findings.append(f"{what}: does not start with #cloud-config")
        files = {f["path"]: f for f in document.get("write_files", [])}
        written = files.get(f"/etc/paddock/{role}.toml", {}).get("content", "")
        if "work_dir" not in written:
            findings.append(f"{what}: the role's config is not written whole: {written!r}")
        commands = [c if isinstance(c, str) else " ".join(c) for c in document.get("runcmd", [])]
        installs = [c for c in commands if "apt-get install" in c]
        if not installs or not all("--force-confold" in c for c in installs):
            findings.append(f"{what}: the package install must keep the config written above (--force-confold)")
        if ("runsc" in document.get("packages", [])) != (role == "worker" and gvisor):
            findings.append(f"{what}: gVisor installed where not asked, or missing where asked")
        if (role == "worker") != ("/usr/local/sbin/paddock-drain" in files):
            findings.append(f"{what}: the drain script belongs on workers only")
        if metrics and "paddock_queue_dispatchable" not in files.get("/usr/local/sbin/paddock-publish-queue", {}).get("content", ""):
            findings.append(f"{what}: the queue publisher is missing")


def check_example(example, module_dir, variables, outputs, findings):
    doc = load(example)
    for item in blocks(doc, "module"):
        for name, body in item.items():
            passed = {k for k in body if not k.startswith("__")} - {"source", "providers", "depends_on", "count", "for_each"}
            required = {v for v, b in variables.items() if "default" not in b}
            for missing in sorted(required - passed):
                findings.append(f"{example}: module {name} does not pass the required variable {missing}")
            for unknown in sorted(passed - set(variables)):
                findings.append(f"{example}: module {name} passes {unknown}, which the module does not declare")
            with open(example) as f:
                for used in re.findall(rf"module\.{name}\.([a-z_]+)", f.read()):
                    if used not in outputs:
                        findings.append(f"{example}: module.{name}.{used} is not an output")


STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def check_format(path, findings):
    with open(path) as f:
        text = f.read()
    if not text.endswith("\n") or text.endswith("\n\n"):
        findings.append(f"{path}: must end with exactly one newline")
    depth, heredoc, run = 0, None, []

    def close_run():
        columns = {line.index("=") for _, line, _ in run}
        if len(columns) > 1:
            findings.append(f"{path}:{run[0][0]}: the = of adjacent attributes are not aligned")
        run.clear()

    for number, line in enumerate(text.splitlines(), 1):
        if heredoc:
            if line.strip() == heredoc:
                heredoc = None
            continue
        if "\t" in line:
            findings.append(f"{path}:{number}: a tab")
        if line != line.rstrip():
            findings.append(f"{path}:{number}: trailing whitespace")
        code = STRING.sub('""', line.split("#", 1)[0] if not line.strip().startswith("#") else "")
        marker = re.search(r"<<-?([A-Z]+)\s*$", code)
        opening = sum(code.count(c) for c in "{[(")
        closing = sum(code.count(c) for c in "}])")
        # As terraform fmt indents: a line that opens brackets (however many)
        # indents what follows one level; the line that closes them, one
        # level less.
        net = opening - closing
        expected = 2 * max(depth - (1 if re.match(r"^\s*[}\])]", code) else 0), 0)
        if line.strip() and not line.strip().startswith("#"):
            indent = len(line) - len(line.lstrip(" "))
            if indent != expected:
                findings.append(f"{path}:{number}: indented {indent}, nesting says {expected}")
        attribute = re.match(r"^\s*[\w-]+\s*=(?!=)(.*)$", code)
        if attribute and not attribute.group(1).startswith(" ") and attribute.group(1).strip():
            findings.append(f"{path}:{number}: one space after =")
        if attribute and attribute.group(1).lstrip().startswith(" "):
            findings.append(f"{path}:{number}: one space after =")
        single = attribute and opening == closing and not marker
        if single and (not run or run[-1][2] == depth):
            run.append((number, line, depth))
        else:
            close_run()
            if single:
                run.append((number, line, depth))
        depth += (net > 0) - (net < 0)
        if marker:
            heredoc = marker.group(1)
    close_run()


def main(root):
    findings = []
    module_dir = os.path.join(root, "aws")
    variables, outputs = check_module(module_dir, findings)
    examples = sorted(glob.glob(os.path.join(root, "examples", "*", "*.tf")))
    if not examples:
        findings.append("no example root under examples/")
    for example in examples:
        check_example(example, module_dir, variables, outputs, findings)
    files = glob.glob(os.path.join(root, "**", "*.tf"), recursive=True)
    for path in sorted(files):
        check_format(path, findings)
    check_cloud_init(module_dir, findings)
    for finding in findings:
        print(f"terraform check: {finding}")
    print(f"terraform check: {len(files)} files parsed, {len(variables)} variables, {len(outputs)} outputs, {len(findings)} findings")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
