"""`vfa review`: the reading web app (serve), its reads as a CSV (export) and agreement.json, its
readers' accounts (readers) and the audit check (verify)."""
from __future__ import annotations

from vfa.cli.options import force_arg


def cmd_review(args) -> None:
    from vfa import app
    from vfa.config import ConfigError

    if args.action == "readers":
        action, name = (args.args + [None, None])[:2]
        app.manage_readers(args.db, action or "list", name, role=args.role,
                           blinded=None if args.blinded is None else args.blinded == "yes")
        return
    if args.action == "verify":
        return 0 if app.verify_db(args.db) else 1
    if args.args:
        raise ConfigError(f"vfa review {args.action}: unexpected argument(s) {' '.join(args.args)}")
    if args.action == "export":
        if not args.out:
            raise ConfigError("vfa review export needs --out reads.csv")
        done = app.export_reads(args.db, args.out, reader=args.reader if args.only_reader else None,
                                agreement_out=args.agreement, force=args.force, keep_identifiers=args.keep_identifiers,
                                audit_out=args.audit)
        print(f"wrote {args.out}: {done['rows']} reads by {', '.join(done['readers']) or 'nobody'}; audit trail "
              f"intact ({done['audit']['entries']} entries)" + "".join(f"; {f}" for f in (args.agreement, args.audit)
                                                                     if f))
        return
    if not args.predictions:
        raise ConfigError("vfa review needs --predictions PRED.csv (or: vfa review export --db DB --out reads.csv)")
    app.serve(args.predictions, args.db, images=args.images, heatmaps=args.heatmaps, vertebrae=args.vertebrae,
              host=args.host, port=args.port, reader=args.reader or "", blind=args.blind,
              keep_identifiers=args.keep_identifiers, threshold=args.threshold, score=args.score, dry_run=args.dry_run,
              certfile=args.certfile, keyfile=args.keyfile, insecure_http=args.insecure_http)


def add_review(sub) -> None:
    p = sub.add_parser("review", help="web worklist where readers confirm, correct and grade the model's findings; "
                                      "export the reads and their agreement")
    p.add_argument("action", nargs="?", choices=("serve", "export", "readers", "verify"), default="serve",
                   help="serve (default): the web app; export: reads.csv (and --agreement agreement.json); "
                        "readers add|list|set|reset|revoke [NAME]: the readers' accounts; verify: check the "
                        "audit trail")
    p.add_argument("args", nargs="*", metavar="ARG", help="readers: the action and the reader's NAME")
    p.add_argument("--db", required=True, help="SQLite file holding the reads (created if missing); nothing "
                                               "else is written")
    p.add_argument("--predictions", help="vfa predict / evaluate output (serve)")
    p.add_argument("--images", help="folder the predictions' relative 'file' paths are under (default: the "
                                     "folder vfa evaluate read, from metrics.json beside the CSV, else the CSV's)")
    p.add_argument("--heatmaps", help="vfa heatmap output folder: overlays shown with the h key")
    p.add_argument("--vertebrae", help="vertebrae.csv: per-vertebra outlines and grades")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default loopback; any other needs "
                                                       "--certfile/--keyfile, or --insecure-http)")
    p.add_argument("--certfile", help="TLS certificate (PEM): serve HTTPS, with Secure __Host- cookies")
    p.add_argument("--keyfile", help="TLS private key (PEM) of --certfile")
    p.add_argument("--insecure-http", action="store_true", help="serve plain HTTP off loopback (secrets and reads "
                                                                "cross the network in clear: trusted networks only)")
    p.add_argument("--port", type=int, default=8000, help="port to serve on (default 8000)")
    p.add_argument("--reader", help="serve: the login form's default reader name (and the first account's, in a "
                                    "database without readers); export with --only-reader: that reader's rows")
    p.add_argument("--role", choices=("reader", "admin"), default="reader", help="readers add: the account's role")
    p.add_argument("--blinded", choices=("yes", "no"), help="readers add/set: the reader's sessions are blinded "
                                                            "(no model output, labels or file names; own case order)")
    p.add_argument("--blind", action="store_true", help="every session blinded to the model and other readers")
    p.add_argument("--threshold", type=float, help="the model's threshold (default: metrics.json beside the "
                                                   "predictions, else 0.5)")
    p.add_argument("--score", help="P(fracture) column (default: metrics.json's, else p_fracture/raw/tta_mean)")
    p.add_argument("--keep-identifiers", action="store_true", help="show and export patient identifiers")
    p.add_argument("--dry-run", action="store_true", help="check the inputs and load them into --db, then stop")
    p.add_argument("--out", help="export: reads.csv to write")
    p.add_argument("--agreement", help="export: also write agreement.json here")
    p.add_argument("--audit", help="export: also write the audit chain (CSV) here, for a study monitor")
    p.add_argument("--only-reader", action="store_true", help="export: only --reader's reads (a labels file)")
    force_arg(p, "export: replace --out / --agreement")
    p.set_defaults(func=cmd_review)
