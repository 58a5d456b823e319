"""The GitLab pipeline (.gitlab-ci.yml and ci/gitlab/cpr-harness.yml) is valid: gitlab-ci-local
parses it, expands its includes and matrix and checks it against GitLab's JSON schema,
listing the jobs without running any. gitlab-ci-local comes from npm (package.json, the
lock) through scripts/setup-node.sh, as for `tox -e gitlab`: installed here, never
skipped. Each check works on a copy of the pipeline files in a temp git repository, so
gitlab-ci-local's state directory never lands in the work tree."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.selftest
ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "ci" / "gitlab" / "cpr-harness.yml"


@pytest.fixture(scope="session")
def gitlab_ci_local():
    """(the gitlab-ci-local command, its environment), after scripts/setup-node.sh."""
    p = subprocess.run(["bash", str(ROOT / "scripts" / "setup-node.sh")], cwd=str(ROOT),
                       capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr[-2000:]
    env = dict(os.environ, PATH=p.stdout.strip() + os.pathsep + os.environ["PATH"])
    env = {k: v for k, v in env.items() if not k.startswith(("CI_", "GITLAB_", "CPRH_FLEET"))}
    return [str(ROOT / "node_modules" / ".bin" / "gitlab-ci-local")], env


@pytest.fixture
def pipeline_copy(tmp_path):
    """The pipeline's files, tracked in a fresh git repository of their own."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / ".gitlab-ci.yml", repo / ".gitlab-ci.yml")
    shutil.copytree(ROOT / "ci", repo / "ci")
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"]):
        subprocess.run(cmd, cwd=str(repo), check=True, capture_output=True, timeout=60)
    return repo


def gcl(tool, repo, *args):
    cmd, env = tool
    return subprocess.run(cmd + list(args), cwd=str(repo), env=env,
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def jobs_of(out):
    """Job name -> its 'when', from --list's table."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^(\S.*?)\s{2,}(\S+)\s+(on_success|always|manual|never)\s", line)
        if m and m.group(1) != "name":
            rows[m.group(1)] = m.group(3)
    return rows


def test_the_nightly_validates_and_lists_its_matrix(gitlab_ci_local, pipeline_copy):
    p = gcl(gitlab_ci_local, pipeline_copy, "--list", "--variable", "CPRH_FLEET=1")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "json schema validated" in p.stderr, p.stderr
    assert jobs_of(p.stdout) == {
        "cprh:prepare: [kvm,10.0.2]": "on_success", "cprh:prepare: [kvm,11.1.3]": "on_success",
        "cprh:run: [kvm,10.0.2,10.0.2,kvm]": "on_success",
        "cprh:run: [kvm,10.0.2,11.1.3,kvm]": "on_success",
        "cprh:run: [kvm,11.1.3,11.1.3,kvm]": "on_success",
        "cprh:merge": "always"}, p.stdout


def test_a_push_runs_the_tests_and_a_schedule_the_nightly(gitlab_ci_local, pipeline_copy):
    p = gcl(gitlab_ci_local, pipeline_copy, "--list")
    assert p.returncode == 0, p.stdout + p.stderr
    assert jobs_of(p.stdout) == {"tests": "on_success"}, p.stdout
    p = gcl(gitlab_ci_local, pipeline_copy, "--list", "--variable", "CI_PIPELINE_SOURCE=schedule")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "tests" not in jobs_of(p.stdout) and "cprh:merge" in jobs_of(p.stdout), p.stdout


@pytest.mark.parametrize("old,new,needle", [
    ("  interruptible: true\n", "  interruptible: sometimes\n", "Invalid .gitlab-ci.yml"),
    ("    max: 2\n", "    max: 5\n", "Invalid .gitlab-ci.yml"),
    ("  stage: cprh-merge\n", "  stage: cprh-merge\n  artifact:\n    paths: [x]\n",
     "Invalid .gitlab-ci.yml"),
])
def test_a_broken_pipeline_is_refused(gitlab_ci_local, pipeline_copy, old, new, needle):
    template = pipeline_copy / "ci" / "gitlab" / "cpr-harness.yml"
    text = template.read_text()
    assert old in text
    template.write_text(text.replace(old, new, 1))
    p = gcl(gitlab_ci_local, pipeline_copy, "--list", "--variable", "CPRH_FLEET=1")
    assert p.returncode != 0 and needle in p.stdout + p.stderr, p.stdout + p.stderr


def test_every_pipeline_variable_is_documented():
    text = TEMPLATE.read_text()
    block = text.split("\nvariables:\n", 1)[1].split("\n\n", 1)[0]
    names = re.findall(r"^  ([A-Z][A-Z0-9_]+):$", block, re.M)
    assert len(names) >= 10, names
    table = (ROOT / "docs" / "fleet.md").read_text()
    missing = [n for n in names + ["CPRH_HOST_CLASS", "CPRH_SRC", "CPRH_DST", "CPRH_ACCEL",
                                   "CPRH_QEMU_VERSION"] if f"| `{n}` |" not in table]
    assert not missing, f"docs/fleet.md's variable table lacks {missing}"
