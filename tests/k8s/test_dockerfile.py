"""The Dockerfile, checked statically (the image itself is built and smoke-tested by
scripts/build-image in CI): only the classic syntax every builder takes (Docker with or without
BuildKit, Podman/Buildah, Kaniko), a multi-stage build on slim Python 3.11, a non-root runtime
stage without compilers or package installs, a HEALTHCHECK script from the repository, `voxq` as
the entry point with a role as the command, a smoke stage that is never the default target, and
agreement with pyproject.toml, .dockerignore, the settings and the Kubernetes manifests."""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shlex
import tomllib
from dataclasses import dataclass, field

import pytest
import yaml

from tests.k8s.k8s_support import K8S, REPO, all_env_names
from tests.voxq.test_demo import EXPECTED_WORDS

DOCKERFILE = REPO / "Dockerfile"
HEALTHCHECK = REPO / "docker" / "voxq-healthcheck"
SMOKE = REPO / "docker" / "smoke.py"
# The instructions and flags of the classic Dockerfile syntax, which every builder takes. BuildKit
# alone adds heredocs, RUN --mount/--network/--security, COPY --chmod/--link/--parents/--exclude,
# ADD --checksum/--keep-git-dir, and the `# syntax=`/`# check=` parser directives.
CLASSIC = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
           "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
CLASSIC_FLAGS = {"FROM": {"--platform"}, "COPY": {"--from", "--chown"}, "ADD": {"--chown"},
                 "HEALTHCHECK": {"--interval", "--timeout", "--start-period", "--retries"}}
COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|build-essential|make|cmake|gfortran|"
                       r"python3?-dev|libc6?-dev|rustc|cargo)\b")


@dataclass
class Instruction:
    keyword: str
    args: str
    heredoc: str = ""


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and stages: comments dropped, continuations joined, heredocs kept."""
    lines = text.splitlines()
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1]
            while i < len(lines) and lines[i].lstrip().startswith("#"):
                i += 1
            line += " " + lines[i].strip()
            i += 1
        keyword, _, args = line.strip().partition(" ")
        ins = Instruction(keyword.upper(), args.strip())
        m = re.search(r"<<-?(['\"]?)(\w+)\1", args)
        if m:
            body = []
            while lines[i] != m.group(2):
                body.append(lines[i])
                i += 1
            i += 1
            ins.heredoc = "\n".join(body) + "\n"
        if ins.keyword == "FROM":
            parts = ins.args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages:
            assert ins.keyword == "ARG", f"{ins.keyword} before the first FROM"
            k, _, v = ins.args.partition("=")
            global_args[k] = v
        else:
            stages[-1].instructions.append(ins)
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE.read_text())


def stage(stages: list[Stage], name: str) -> Stage:
    (found,) = [s for s in stages if s.name == name]
    return found


@pytest.fixture(scope="module")
def final(dockerfile: tuple[dict[str, str], list[Stage]]) -> Stage:
    """The shipped stage, `runtime` (the file's last stage is only its alias)."""
    return stage(dockerfile[1], "runtime")


def resolve(ref: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], ref)


def exec_form(ins: Instruction) -> list[str]:
    value = yaml.safe_load(ins.args)  # JSON arrays are YAML
    assert isinstance(value, list), f"{ins.keyword} must use the exec (JSON array) form"
    return [str(v) for v in value]


def buildkit_only(text: str) -> list[str]:
    """What in a Dockerfile only BuildKit understands: parser directives other than `escape`,
    heredocs, instructions or flags outside the classic syntax."""
    problems = []
    for line in text.splitlines():
        if not re.match(r"#\s*\w+\s*=", line):
            break
        if not re.match(r"#\s*escape\s*=", line, re.I):
            problems.append(f"parser directive {line}")
    if "<<" in text:
        problems.append("heredoc")
    _, stages = parse(text)
    for ins in (i for s in stages for i in s.instructions):
        if ins.keyword not in CLASSIC:
            problems.append(f"instruction {ins.keyword}")
        if ins.keyword in ("RUN", "CMD", "ENTRYPOINT"):  # flags lead; the command may have its own
            flags = set(re.findall(r"^(--[\w-]+)", ins.args))
        else:
            flags = {f.split("=")[0] for f in ins.args.split() if f.startswith("--")}
        problems += [f"{ins.keyword} {f}" for f in sorted(flags - CLASSIC_FLAGS.get(ins.keyword, set()))]
    return problems


def test_only_classic_syntax() -> None:
    """A heredoc, a BuildKit flag or a `# syntax=` line would break Buildah, Kaniko and old Docker."""
    assert buildkit_only(DOCKERFILE.read_text()) == []


def test_buildkit_syntax_is_recognised() -> None:
    """The check above rejects what BuildKit alone accepts (the old Dockerfile used the first three)."""
    text = ("# syntax=docker/dockerfile:1.7\nFROM a AS b\nCOPY --chmod=0755 <<'EOF' /x\nhello\nEOF\n"
            "RUN --mount=type=cache,target=/c pip install x\nCOPY --link --from=b /x /y\nRUN ls --all\n")
    assert buildkit_only(text) == ["parser directive # syntax=docker/dockerfile:1.7", "heredoc",
                                   "COPY --chmod", "RUN --mount", "COPY --link"]
    assert buildkit_only("# escape=`\nFROM a\nCOPY --from=b --chown=1:1 x y\nRUN ls --all\n") == []


def test_multi_stage_on_slim_python_311(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    args, stages = dockerfile
    assert [s.name for s in stages] == ["build", "runtime", "smoke", "image"]
    for n, s in enumerate(stages):
        if s.base in {earlier.name for earlier in stages[:n]}:
            continue
        image = resolve(s.base, args)
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", image), image
    runtime = stage(stages, "runtime")
    assert runtime.base == stages[0].base and any(f"--from={stages[0].name}" in i.args
                                                  for i in runtime.all("COPY"))


def test_default_target_is_the_runtime_image(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    """`docker build .` builds the last stage: a bare alias of `runtime`, so never the smoke test."""
    last = dockerfile[1][-1]
    assert last.base == "runtime" and not last.instructions


def test_smoke_stage_tests_the_runtime_image(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    smoke = stage(dockerfile[1], "smoke")
    assert smoke.base == "runtime" and not smoke.all("USER"), "the smoke test runs as the image's user"
    (run,) = smoke.all("RUN")
    assert run.args == "python /opt/voxq-smoke/smoke.py"
    assert any(c.args.split() == ["docker/smoke.py", "/opt/voxq-smoke/smoke.py"] for c in smoke.all("COPY"))
    spec = importlib.util.spec_from_file_location("voxq_image_smoke", SMOKE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert tuple(module.EXPECTED_WORDS) == EXPECTED_WORDS, "the words the test suite expects of the demo"
    assert module.REQUIRED_COMMANDS <= set(module.commands()), "every required command is registered"
    assert {"api", "worker", "tts-worker", "produce", "tts", "redis", "demo"} <= module.REQUIRED_COMMANDS


def test_final_stage_is_non_root_without_compilers(final: Stage) -> None:
    (user,) = final.all("USER")
    uid = user.args.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "a numeric non-root uid (runAsNonRoot can check it)"
    for ins in final.all("RUN"):
        assert not COMPILERS.search(ins.args), f"compiler in the final stage: {ins.args}"
        assert "apt-get install" not in ins.args and "pip install" not in ins.args, \
            "the final stage installs nothing; it copies the build stage's environment"
    assert final.instructions.index(user) > max(
        final.instructions.index(i) for i in final.instructions if i.keyword in ("RUN", "COPY"))


def test_user_matches_the_pods_run_as_user(final: Stage) -> None:
    uid = int(final.all("USER")[0].args.split(":")[0])
    for name in ("api.yaml", "worker.yaml", "tts-worker.yaml"):
        for d in yaml.safe_load_all((K8S / "base" / name).read_text()):
            if d["kind"] == "Deployment":
                assert d["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid


def test_entrypoint_is_voxq_and_the_command_a_role(final: Stage) -> None:
    commands = tomllib.loads((REPO / "pyproject.toml").read_text())[
        "project"]["entry-points"]["voxq.commands"]
    (entrypoint,) = final.all("ENTRYPOINT")
    (cmd,) = final.all("CMD")
    assert exec_form(entrypoint) == ["voxq"]
    assert exec_form(cmd)[0] in {"api", "worker", "tts-worker"} & set(commands)


def test_healthcheck_probes_the_running_role(final: Stage) -> None:
    (hc,) = final.all("HEALTHCHECK")
    assert "CMD" in hc.args and "NONE" not in hc.args.upper().split()
    assert exec_form(Instruction("CMD", hc.args.split("CMD", 1)[1].strip())) == ["voxq-healthcheck"]
    (script,) = [c for c in final.all("COPY") if "voxq-healthcheck" in c.args]
    assert script.args.split() == ["docker/voxq-healthcheck", "/opt/voxq/bin/voxq-healthcheck"]
    assert any(re.search(r"\bchmod 0?755 /opt/voxq/bin/voxq-healthcheck\b", r.args) for r in final.all("RUN"))
    source = HEALTHCHECK.read_text()
    assert source.startswith("#!/opt/voxq/bin/python\n")
    compile(source, "voxq-healthcheck", "exec")
    assert "/healthz" in source and "VOXQ_WORKER_HEALTH_PORT" in source


def test_env_and_ports_agree_with_settings_and_manifests(final: Stage) -> None:
    env: dict[str, str] = {}
    for ins in final.all("ENV"):
        for token in shlex.split(ins.args):
            k, _, v = token.partition("=")
            env[k] = v
    names = all_env_names()
    for k in env:
        assert not k.startswith("VOXQ_") or k in names, f"{k} is not a voxq setting"
    assert env["VOXQ_API_HOST"] == "0.0.0.0"
    exposed = {int(p.split("/")[0]) for ins in final.all("EXPOSE") for p in ins.args.split()}
    assert exposed == {8000, int(env["VOXQ_WORKER_HEALTH_PORT"])}
    assert env["HOME"] == env["TMPDIR"] == "/tmp", "the only writable place at run time"
    assert "/opt/voxq/bin" in env["PATH"].split(":")


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore excludes `path` (last matching pattern wins, `!` re-includes)."""
    out = False
    for p in patterns:
        neg = p.startswith("!")
        p = p.lstrip("!").rstrip("/")
        parts = path.split("/")
        hit = any(fnmatch.fnmatch("/".join(parts[:n]), p) or
                  (p.startswith("**/") and fnmatch.fnmatch(parts[n - 1], p[3:]))
                  for n in range(1, len(parts) + 1))
        if hit:
            out = not neg
    return out


def test_build_context_has_what_the_build_copies(
        dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = []
    for ins in (i for s in dockerfile[1] for i in s.all("COPY") if "--from=" not in i.args):
        srcs = [a for a in ins.args.split() if not a.startswith("--")][:-1]
        copied += srcs
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} <= set(copied)
    assert {"pyproject.toml", "README.md"} <= set(copied)  # readme = "README.md" in pyproject
    assert {"docker/voxq-healthcheck", "docker/smoke.py"} <= set(copied)
    for src in copied:
        assert (REPO / src).exists(), src
        assert not ignored(src, patterns), f"{src} is excluded by .dockerignore"
    for path in (".git", "tests/k8s/test_dockerfile.py", ".hypothesis/x", "voxq/__pycache__/a.pyc",
                 "voxq.egg-info", ".venv", "scripts/build-image", "docs/capacity.md"):
        assert ignored(path, patterns), f"{path} would be sent to the build"


def test_build_stage_proves_the_local_engine(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    """The build fails unless the offline engine is really there (no engine to run it here)."""
    build = " ".join(i.args for i in dockerfile[1][0].all("RUN"))
    for needle in ("pocketsphinx.get_model_path()", "espeakng_loader.get_library_path()",
                   "'MP3' in soundfile.available_formats()", "compileall"):
        assert needle in build, needle
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("espeakng-loader") for d in deps), \
        "the image gets espeak-ng from the espeakng-loader wheel, through the dependencies"
    assert any(d.startswith("pocketsphinx") for d in deps)
