"""The worklist query: sorted, filtered and paged in SQL, so 10,000 cases cost one indexed query
per page. A blinded session sees neither the model's output nor other readers' reads nor file
names: its sorts and filters on them are refused (ignored), its rows carry none of them, and its
cases are numbered and ordered by the reader's own shuffled codes (vfa.app.accounts)."""
from __future__ import annotations

from dataclasses import dataclass

# sort key -> ORDER BY (ties broken by the list's order)
SORTS = {"index": "c.idx", "p": "c.p DESC, c.idx", "p_asc": "c.p ASC, c.idx", "uncertainty": "c.unc ASC, c.idx",
         "discordance": "COALESCE(a.discord, 0) DESC, COALESCE(a.n_reads, 0) DESC, c.idx", "code": "k.code"}
BLIND_SORTS = ("code",)
STATUSES = ("", "unread", "read", "unread_any", "read_any", "discordant")
BLIND_STATUSES = ("", "unread", "read")
PER_PAGE = 50
MAX_PER_PAGE = 500

_AGG = ("LEFT JOIN (SELECT image_id, COUNT(*) AS n_reads, MAX(fracture) - MIN(fracture) AS discord, "
        "GROUP_CONCAT(reader, ', ') AS readers FROM latest GROUP BY image_id) a ON a.image_id = c.image_id "
        "LEFT JOIN latest m ON m.image_id = c.image_id AND m.reader = :me ")


@dataclass
class Query:
    sort: str = "index"
    call: str = ""        # "", "0", "1"
    status: str = ""
    split: str = ""
    reader: str = ""      # cases read by this reader
    page: int = 1
    per_page: int = PER_PAGE

    @classmethod
    def parse(cls, params, blinded: bool) -> "Query":
        def get(k, allowed=None):
            v = str(params.get(k, "") or "")[:100]
            return v if allowed is None or v in allowed else ""

        try:
            page = max(1, int(params.get("page", 1)))
            per_page = min(MAX_PER_PAGE, max(1, int(params.get("per_page", PER_PAGE))))
        except (TypeError, ValueError):
            page, per_page = 1, PER_PAGE
        sorts = BLIND_SORTS if blinded else [k for k in SORTS if k not in BLIND_SORTS]
        q = cls(sort=get("sort", sorts) or sorts[0], call=get("call", ("", "0", "1")),
                status=get("status", BLIND_STATUSES if blinded else STATUSES), split=get("split"),
                reader=get("reader"), page=page, per_page=per_page)
        if blinded:
            q.call, q.reader = "", ""
        return q

    def params(self, **change) -> dict:
        d = {"sort": self.sort, "call": self.call, "status": self.status, "split": self.split, "reader": self.reader,
             "page": self.page, "per_page": self.per_page}
        d.update(change)
        return {k: v for k, v in d.items() if v not in ("", None) and not (k == "per_page" and v == PER_PAGE)}


def _where(q: Query) -> tuple[str, dict]:
    clauses, args = [], {}
    if q.call:
        clauses.append("c.call = :call")
        args["call"] = int(q.call)
    if q.split:
        clauses.append("c.split = :split")
        args["split"] = q.split
    if q.reader:
        clauses.append("EXISTS (SELECT 1 FROM latest x WHERE x.image_id = c.image_id AND x.reader = :reader)")
        args["reader"] = q.reader
    clauses += {"": [], "unread": ["m.read_id IS NULL"], "read": ["m.read_id IS NOT NULL"],
                "unread_any": ["a.n_reads IS NULL"], "read_any": ["a.n_reads IS NOT NULL"],
                "discordant": ["a.discord > 0"]}[q.status]
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def _cases(blinded: bool) -> str:
    """The FROM clause: the cases with their reads, and a blinded reader's codes."""
    codes = "JOIN codes k ON k.image_id = c.image_id AND k.reader = :me " if blinded else ""
    return f"FROM cases c {codes}{_AGG}"


def page(conn, q: Query, me: str, blinded: bool) -> tuple[list[dict], int]:
    """(rows of the page, total rows matching the filters); a blinded reader's rows are numbered by
    code (`idx` is the code) and carry no image name."""
    where, args = _where(q)
    args["me"] = me
    total = conn.execute(f"SELECT COUNT(*) {_cases(blinded)}{where}", args).fetchone()[0]
    sql = (f"SELECT {'k.code' if blinded else 'c.idx'} AS idx, c.image_id, c.file, c.p, c.call, c.label, c.split, "
           f"c.unc, a.n_reads, a.discord, a.readers, m.fracture AS my_fracture, m.grade AS my_grade "
           f"{_cases(blinded)}{where} ORDER BY {SORTS[q.sort]} LIMIT :limit OFFSET :offset")
    rows = conn.execute(sql, {**args, "limit": q.per_page, "offset": (q.page - 1) * q.per_page}).fetchall()
    out = [dict(r) for r in rows]
    if blinded:
        for r in out:
            for k in ("image_id", "file", "p", "call", "label", "unc", "n_reads", "discord", "readers"):
                r.pop(k)
    return out, total


def neighbours(conn, q: Query, me: str, idx: int, blinded: bool = False) -> tuple[int | None, int | None]:
    """The cases before and after `idx` (a blinded reader's: the code) in the worklist's order and
    filters (ignoring paging)."""
    where, args = _where(q)
    args["me"] = me
    number = "k.code" if blinded else "c.idx"
    order = [r[0] for r in conn.execute(f"SELECT {number} {_cases(blinded)}{where} ORDER BY {SORTS[q.sort]}", args)]
    try:
        i = order.index(idx)
    except ValueError:  # the case left the filter (e.g. now read): continue from the list's start
        return None, order[0] if order else None
    return (order[i - 1] if i > 0 else None), (order[i + 1] if i + 1 < len(order) else None)


def splits(conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT split FROM cases WHERE split != '' ORDER BY split")]


def readers(conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT reader FROM latest ORDER BY reader")]
