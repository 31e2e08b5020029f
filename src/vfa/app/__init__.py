"""`vfa review`: a web worklist where readers confirm, correct and grade what the model found
(FastAPI + Jinja2, SQLite; torch-free). See docs/review.md."""
from vfa.app.cases import ReviewError, load_cases
from vfa.app.results import agreement_report, export_reads
from vfa.app.serve import manage_readers, prepare, serve, verify_db

__all__ = ["ReviewError", "agreement_report", "export_reads", "load_cases", "manage_readers", "prepare", "serve",
           "verify_db"]
