"""`vfa node`: the DICOM node (serve), its queue's status, and resending a study (docs/node.md)."""
from __future__ import annotations


def cmd_node(args) -> None:
    from vfa.errors import ConfigError
    from vfa.node import config, status

    cfg = config.resolve(args.config, store=args.store, model=args.model, aet=args.aet, host=args.host,
                         port=args.port, send_to=args.send_to, allow=args.allow, quiet_time=args.quiet_time,
                         device=args.device, max_attempts=args.max_attempts,
                         metrics_port=args.metrics_port)
    if args.action == "status":
        print(status.format_status(status.status(cfg.store)))
    elif args.action == "resend":
        if not args.study:
            raise ConfigError("vfa node resend needs a STUDY (its StudyInstanceUID or the uid-... id of `status`)")
        print(status.resend(cfg.store, args.study))
    else:
        from vfa.node.service import serve

        serve(config.for_running(cfg))


def add_node(sub) -> None:
    p = sub.add_parser("node", help="DICOM node: receive VFA studies by C-STORE, read each complete study, send "
                                    "the SR + SC back; status and resend")
    p.add_argument("action", nargs="?", choices=("serve", "status", "resend"), default="serve",
                   help="serve (default): run the node; status: queue counts and last errors; resend STUDY")
    p.add_argument("study", nargs="?", help="resend: the StudyInstanceUID or the uid-... id `status` prints")
    p.add_argument("--store", help="folder for the received files, the results and the queue (queue.sqlite)")
    p.add_argument("--config", help="node.yaml: any setting below and more (docs/node.md); the options win")
    p.add_argument("--model", nargs="+", help="checkpoint(s) or an ensemble file, loaded once")
    p.add_argument("--aet", help="the node's AE title (default VFA)")
    p.add_argument("--port", type=int, help="port to listen on (default 11112)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1: loopback only)")
    p.add_argument("--send-to", nargs="+", metavar="AET@HOST:PORT", help="destination(s) of the results")
    p.add_argument("--allow", help="calling AE titles allowed, comma-separated, each AET or AET@HOST "
                                   "(default: any caller)")
    p.add_argument("--quiet-time", type=float, help="seconds without a new instance before a study is read "
                                                     "(default 10)")
    p.add_argument("--max-attempts", type=int, help="reads or sends of a study before it is dead-lettered "
                                                     "(default 6)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--metrics-port", type=int, help="serve GET /health and /metrics (Prometheus) on this port "
                                                    "(default: off)")
    p.set_defaults(func=cmd_node)
