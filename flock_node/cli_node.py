"""`flock-node run NAME ...` (the node agent) and `flock-node service NAME ...` (a systemd
unit for it): the agent's command line."""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import sys
from pathlib import Path

from flock_node import __version__, logs, paths, sdnotify
from flock_node.argtypes import positive_seconds, seconds_or_zero, seed_url
from flock_node.names import is_name
from flock_node.protocol import load_key
from flock_node.transport import tcp_addresses


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flock-node", description="The Flock node agent.")
    p.add_argument("--version", action="version", version=f"flock-node {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent for node NAME until SIGTERM/SIGINT")
    _run_flags(run)
    service = sub.add_parser("service", help="print a systemd unit that runs `flock-node run "
                             "NAME` with the same flags")
    _run_flags(service)
    return p


def _pool_size(s: str) -> int:
    """--swim-pool: a whole number of connections, 1 to 4096."""
    if not s.isdigit() or not 1 <= int(s) <= 4096:
        raise argparse.ArgumentTypeError(f"expected a number of connections from 1 to 4096, "
                                         f"got {s!r}")
    return int(s)


def _run_flags(r: argparse.ArgumentParser) -> None:
    r.add_argument("name", metavar="NAME")
    r.add_argument("--recipe", action="append", default=[], metavar="FILE",
                   help="recipe file (repeatable, converged in order)")
    r.add_argument("--listen", metavar="URL", help="tcp://HOST:PORT or tls+tcp://HOST:PORT "
                   "(bus on PORT, RPC on PORT+1, SWIM on PORT+2)")
    r.add_argument("--seed", action="append", default=[], metavar="URL", type=seed_url,
                   help="bus address of a node to join (repeatable)")
    r.add_argument("--tag", action="append", default=[], metavar="TAG")
    r.add_argument("--state-dir", metavar="DIR")
    r.add_argument("--runtime-dir", metavar="DIR")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--key-file", metavar="FILE")
    g.add_argument("--insecure", action="store_true", help="allow TCP without a flock key")
    r.add_argument("--tls-dir", metavar="DIR",
                   help="with tls+tcp: this node's certificate (ca.crt, identity.crt, "
                        "identity.key; default FLOCK_TLS_DIR, then <config dir>/tls)")
    r.add_argument("--policy", metavar="FILE",
                   help="who may call what (default <config dir>/policy.toml if it exists)")
    r.add_argument("--heartbeat", type=positive_seconds, default=1.0, metavar="SECONDS")
    r.add_argument("--membership", choices=["mesh", "swim"],
                   default=os.environ.get("FLOCK_MEMBERSHIP", "swim"),
                   help="swim (default): SWIM gossip with a bounded number of connections "
                        "whatever the flock's size; mesh: heartbeats over a full mesh of "
                        "every node (the former default, kept for a release)")
    r.add_argument("--swim-pool", type=_pool_size, default=32, metavar="N",
                   help="with --membership swim: outgoing connections kept open besides the "
                        "ring neighbours (default 32)")
    r.add_argument("--ttl", type=positive_seconds, default=24 * 3600.0, metavar="SECONDS",
                   help="how long an undelivered notification is retried (default 24 h)")
    r.add_argument("--stop-timeout", type=positive_seconds, default=30.0, metavar="SECONDS",
                   help="on SIGTERM/SIGINT, how long the resource in progress may still run "
                        "before it is killed (default 30)")
    r.add_argument("--interval", type=positive_seconds, metavar="SECONDS",
                   help="converge after start, then every SECONDS (chef-client's daemon mode)")
    r.add_argument("--splay", type=seconds_or_zero, default=0.0, metavar="SECONDS",
                   help="with --interval: add a fresh random 0..SECONDS to each wait, so a "
                        "fleet does not converge in lock-step")
    r.add_argument("--log-level", default=os.environ.get("FLOCK_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"])
    r.add_argument("--log-file", metavar="FILE",
                   help="append the log to FILE instead of stderr; SIGHUP reopens it (rotation "
                        "is left to logrotate)")


def _fail(msg: str, code: int = 2) -> int:
    print(f"flock-node: {msg}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.listen:
        # The address's shape first: a wrong scheme is the real mistake, not a missing key.
        try:
            tcp_addresses(args.listen)
        except ValueError as e:
            return _fail(str(e))
    if args.splay and not args.interval:
        return _fail("--splay needs --interval: it spreads scheduled converges")
    if not is_name(args.name):
        return _fail(f"invalid node name {args.name!r}: use letters, digits, '.', '_', '-' "
                     "(at most 63, starting with a letter or digit)")
    recipes = []
    for r in args.recipe:
        rp = Path(r).resolve()
        if not rp.is_file():
            return _fail(f"recipe file {r} does not exist")
        recipes.append(rp)
    tls_mode = bool(args.listen and args.listen.startswith("tls+tcp://")) or any(
        s.startswith("tls+tcp://") for s in args.seed)
    key = None
    if not args.insecure and not tls_mode:
        kf = paths.key_file(args.key_file)
        if kf is not None:
            try:
                key = load_key(kf)
            except OSError as e:
                return _fail(f"cannot read key file {kf}: {e.strerror}")
            except ValueError as e:
                return _fail(str(e))
    if tls_mode and not (args.listen or "").startswith("tls+tcp://"):
        return _fail("tls+tcp:// seeds need --listen tls+tcp://HOST:PORT: a node on TLS "
                     "speaks only TLS")
    if args.listen and key is None and not args.insecure and not tls_mode:
        return _fail(f"--listen {args.listen} needs a flock key: make one with `flockctl keygen` "
                     "and pass --key-file (or set FLOCK_KEY_FILE), or say --insecure")
    tls = policy = None
    if tls_mode:
        from flock_node.trust.tls import TlsError, check_node_identity, load_identity, tls_dir

        try:
            tls = load_identity(tls_dir(args.tls_dir))
        except TlsError as e:
            return _fail(str(e))
        why = check_node_identity(tls, args.name)
        if why is not None:
            return _fail(f"refusing to start {args.name}: {why}")
    # Roles and policy apply to verified callers: on TLS only (a key holder is an operator).
    policy_file = Path(args.policy) if args.policy else paths.config_dir() / "policy.toml"
    if args.policy and not tls_mode:
        return _fail("--policy needs tls+tcp: with a shared key every key holder is an operator")
    if tls_mode:
        from flock_node.trust.policy import PolicyError, load

        try:
            if args.policy or policy_file.exists():
                policy = load(policy_file)
        except (PolicyError, OSError) as e:
            return _fail(str(e))
    if args.command == "service":
        print(systemd_unit(args, recipes), end="")
        return 0
    try:
        logs.setup(args.name, args.log_level, args.log_file)
    except OSError as e:
        return _fail(f"cannot open log file {args.log_file}: {e.strerror}")
    sdnotify.take_socket()  # before any child process: only the agent speaks to systemd
    os.environ["FLOCK_NODE"] = args.name  # recipes and their commands can tell where they run
    from flock_node.agent import AgentConfig
    from flock_node.process import run_agent
    from flock_node.store import StoreError
    from flock_node.transport import AddressInUse

    cfg = AgentConfig(
        name=args.name, recipes=recipes, listen=args.listen, seeds=args.seed, tags=args.tag,
        state_dir=paths.state_dir(args.name, args.state_dir),
        runtime_dir=paths.runtime_dir(args.runtime_dir), key=key, heartbeat=args.heartbeat,
        ttl=args.ttl, stop_timeout=args.stop_timeout, interval=args.interval, splay=args.splay,
        tls=tls, membership=args.membership, swim_pool=args.swim_pool,
    )
    if policy is not None:
        cfg.policy = policy
    try:
        return run_agent(cfg)
    except (StoreError, AddressInUse) as e:
        return _fail((e.strerror if isinstance(e, OSError) else None) or str(e), 1)
    except OSError as e:
        if e.errno == errno.EADDRINUSE and e.strerror:
            return _fail(e.strerror)
        return _fail(str(e))


def systemd_unit(args: argparse.Namespace, recipes: list[Path]) -> str:
    """A systemd unit running this agent with these flags: absolute paths, restarted on
    failure, stopped with SIGTERM and given --stop-timeout (plus a margin) to finish. A stop
    takes at most --stop-timeout, then work.ABANDON_AFTER (3 s) for a killed action to come
    back, then about 2 s to leave the flock: 15 s of margin stay well above that. Type=notify:
    the agent says READY=1 once its recipe compiled and it serves."""
    cmd = [sys.executable, "-m", "flock_node.cli_node", "run", args.name]
    for r in recipes:
        cmd += ["--recipe", str(r)]
    flags: list[tuple[str, object]] = [
        ("--listen", args.listen), ("--state-dir", _abs(args.state_dir)),
        ("--runtime-dir", _abs(args.runtime_dir)), ("--key-file", _abs(args.key_file)),
        ("--tls-dir", _abs(args.tls_dir)), ("--policy", _abs(args.policy)),
        ("--heartbeat", args.heartbeat), ("--ttl", args.ttl),
        # Always written: every agent of a flock must run one mode, whatever a later
        # release's default (or this shell's FLOCK_MEMBERSHIP) is.
        ("--membership", args.membership),
        ("--swim-pool", args.swim_pool if args.swim_pool != 32 else None),
        ("--stop-timeout", args.stop_timeout), ("--interval", args.interval),
        ("--log-level", args.log_level), ("--log-file", _abs(args.log_file)),
    ]
    for flag, value in flags:
        if value is not None:
            cmd += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if args.splay:
        cmd += ["--splay", f"{args.splay:g}"]
    for seed in args.seed:
        cmd += ["--seed", seed]
    for tag in args.tag:
        cmd += ["--tag", tag]
    if args.insecure:
        cmd.append("--insecure")
    return f"""[Unit]
Description=Flock node agent {args.name}
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={" ".join(shlex.quote(c) for c in cmd)}
Restart=on-failure
RestartSec=2
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec={args.stop_timeout + 15:g}
Environment=PYTHONUNBUFFERED=1

[Install]
WantedBy=multi-user.target
"""


def _abs(path: str | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


if __name__ == "__main__":
    sys.exit(main())
