"""Where Flock keeps its files: platformdirs, overridable by flags and environment."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import platformdirs

APP = "flock"


def config_dir() -> Path:
    return Path(os.environ.get("FLOCK_CONFIG_DIR") or platformdirs.user_config_dir(APP))


def runtime_dir(override: str | None = None) -> Path:
    """Directory of the local ipc sockets; created 0700 so only this user reaches them."""
    explicit = override or os.environ.get("FLOCK_RUNTIME_DIR")
    if explicit:
        return Path(explicit)
    # Without XDG_RUNTIME_DIR platformdirs falls back to /tmp/runtime-UID and warns; the
    # fallback is fine (the agent makes it 0700), the warning is noise in every command.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Path(platformdirs.user_runtime_dir(APP))


def ensure_private_dir(path: Path) -> Path:
    """Create `path` 0700. An existing directory is used as it is, unless others could write
    in it (then our sockets or database could be swapped under us): that is refused."""
    if not path.exists():
        try:
            path.mkdir(parents=True, mode=0o700)
        except FileExistsError:
            pass  # made by another agent starting at the same moment: checked below
        else:
            os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
            return path
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise OSError(
            f"{path} is writable by other users or not ours (mode {st.st_mode & 0o777:o}); "
            "use a private directory (--runtime-dir / --state-dir)"
        )
    return path


def state_dir(node: str, override: str | None = None) -> Path:
    base = override or os.environ.get("FLOCK_STATE_DIR")
    if base:
        return Path(base)
    return Path(platformdirs.user_state_dir(APP)) / node


def default_key_file() -> Path:
    return config_dir() / "flock.key"


def key_file(override: str | None = None) -> Path | None:
    """The key file to use: flag, then FLOCK_KEY_FILE, then the default one if it exists."""
    if override:
        return Path(override)
    env = os.environ.get("FLOCK_KEY_FILE")
    if env:
        return Path(env)
    d = default_key_file()
    return d if d.exists() else None


def console_config() -> Path:
    return config_dir() / "console.toml"
