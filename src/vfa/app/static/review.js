// vfa review: keyboard-driven worklist and case view. Plain JavaScript, no build step.
"use strict";
(function () {
  const page = document.body.dataset.page;
  const typing = (e) => /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName) && e.target.type !== "radio";
  const go = (href) => { if (href) window.location.href = href; };
  const qs = (q) => { const s = new URLSearchParams(q || {}).toString(); return s ? "?" + s : ""; };

  if (page === "worklist") {
    const rows = Array.from(document.querySelectorAll("#worklist tbody tr"));
    let sel = 0;
    const mark = () => rows.forEach((r, i) => r.classList.toggle("sel", i === sel));
    if (rows.length) mark();
    rows.forEach((r, i) => r.addEventListener("click", (e) => { if (e.target.tagName !== "A") { sel = i; mark(); go(r.dataset.href); } }));
    document.addEventListener("keydown", (e) => {
      if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
      if (e.key === "j" || e.key === "ArrowDown") { sel = Math.min(rows.length - 1, sel + 1); mark(); rows[sel] && rows[sel].scrollIntoView({block: "nearest"}); }
      else if (e.key === "k" || e.key === "ArrowUp") { sel = Math.max(0, sel - 1); mark(); rows[sel] && rows[sel].scrollIntoView({block: "nearest"}); }
      else if (e.key === "Enter" && rows[sel]) go(rows[sel].dataset.href);
      else if (e.key === "n") { const a = document.getElementById("next-page"); a && go(a.href); }
      else if (e.key === "p") { const a = document.getElementById("prev-page"); a && go(a.href); }
      else return;
      e.preventDefault();
    });
    return;
  }
  if (page !== "case") return;

  const data = JSON.parse(document.getElementById("case-data").textContent);
  const form = document.getElementById("read-form");
  const status = document.getElementById("status");
  const img = document.getElementById("image");
  const heat = document.getElementById("heatmap");
  const svg = document.getElementById("outlines");
  const stage = document.getElementById("stage");
  const viewport = document.getElementById("viewport");
  const COLORS = ["#2ecc40", "#ffdc00", "#ff851b", "#ff4136"];
  let level = -1;  // the level that grade keys apply to (-1: overall)
  let scale = 1, tx = 0, ty = 0, drag = null;  // the view: zoom and pan

  // ---- the form <-> a read
  const setFracture = (v) => { const r = document.getElementById(v ? "frac-yes" : "frac-no"); r.checked = true; };
  function fill(read) {
    if (!read) return;
    setFracture(read.fracture);
    form.grade.value = read.grade === null || read.grade === undefined ? "" : String(read.grade);
    for (const [lv, g] of Object.entries(read.grades || {})) { const s = form.querySelector(`[data-level="${lv}"]`); if (s) s.value = String(g); }
    form.shape.value = read.shape || "";
    form.confidence.value = read.confidence ? String(read.confidence) : "";
    form.note.value = read.note || "";
  }
  function collect() {
    const f = form.querySelector("input[name=fracture]:checked");
    const grades = {};
    form.querySelectorAll("[data-level]").forEach((s) => { if (s.value !== "") grades[s.dataset.level] = Number(s.value); });
    return { idx: data.idx, fracture: f ? Number(f.value) : null, grade: form.grade.value === "" ? null : Number(form.grade.value),
      grades, shape: form.shape.value, confidence: form.confidence.value === "" ? null : Number(form.confidence.value),
      note: form.note.value, request_id: (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random()) };
  }
  let saving = false;  // one save at a time (Enter on a focused button must not post twice)
  async function save(thenNext) {
    if (saving) return;
    const read = collect();
    if (read.fracture === null) { status.textContent = "choose fracture yes (y) or no (n) first"; status.className = "error"; return; }
    status.textContent = "saving..."; status.className = "";
    saving = true;
    try {
      const r = await fetch("/api/reads", { method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": data.csrf }, body: JSON.stringify(read) });
      const body = await r.json();
      if (!r.ok) throw new Error(body.error || r.statusText);
      status.textContent = `saved (version ${body.version})`; status.className = "ok";
      document.body.dataset.saved = String(body.version);
      if (!body.duplicate) addHistory(body, read);
      if (thenNext && data.next) go(`/case/${data.next}${qs(data.query)}`);
      else if (thenNext) go(`/worklist${qs(data.query)}`);
      saving = thenNext;  // stays set while the next page loads
    } catch (err) { status.textContent = "not saved: " + err.message; status.className = "error"; saving = false; }
  }
  // the history list follows a save made on this page (s), as the server would render it on reload
  function addHistory(saved, read) {
    const list = document.getElementById("history");
    if (!list) return;
    const li = document.createElement("li");
    li.textContent = `v${saved.version} ${saved.created_at}: ${read.fracture ? "fracture" : "no fracture"}` +
      (read.grade === null ? "" : `, grade ${read.grade}`);
    list.appendChild(li);
    const count = document.getElementById("history-count");
    if (count) count.textContent = String(list.children.length);
  }
  fill(data.read);
  form.addEventListener("submit", (e) => { e.preventDefault(); save(true); });
  const acceptButton = document.getElementById("accept");
  function accept() {
    if (data.blinded || data.call === undefined) return;
    setFracture(data.call);
    if (data.model_grade !== null && data.model_grade !== undefined) form.grade.value = String(data.model_grade);
    else if (!data.call) form.grade.value = "0";
    save(true);
  }
  if (acceptButton) acceptButton.addEventListener("click", accept);

  // ---- outlines
  const NS = "http://www.w3.org/2000/svg";
  function drawOutlines() {
    svg.setAttribute("viewBox", `0 0 ${img.naturalWidth} ${img.naturalHeight}`);
    svg.innerHTML = "";
    for (const v of data.vertebrae || []) {
      const ne = v.evaluable === false;  // the model could not read this level: gray, dashed, "n/e"
      const color = ne ? "#969696" : v.grade === undefined || v.grade === null ? "#7fdbff" : COLORS[v.grade];
      let pts = v.outline;
      if (!pts && v.box) { const [x0, y0, x1, y1] = v.box; pts = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]; }
      if (!pts) continue;
      const poly = document.createElementNS(NS, "polygon");
      poly.setAttribute("points", pts.map((p) => p.join(",")).join(" "));
      poly.setAttribute("stroke", color); poly.setAttribute("class", "vertebra"); poly.dataset.level = v.level;
      if (ne) poly.setAttribute("stroke-dasharray", "3 3");
      svg.appendChild(poly);
      const t = document.createElementNS(NS, "text");
      const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
      t.setAttribute("x", Math.max(...xs) + 3); t.setAttribute("y", (Math.min(...ys) + Math.max(...ys)) / 2 + 3);
      t.setAttribute("fill", color);
      t.textContent = v.level + (ne ? " n/e" : v.grade ? ` G${v.grade}` : "");
      svg.appendChild(t);
    }
  }
  function fit() {  // the whole image in the viewer; z shows it at full resolution (1 image pixel = 1 screen pixel)
    const r = viewport.getBoundingClientRect();
    scale = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight) || 1;
    tx = (r.width - img.naturalWidth * scale) / 2; ty = (r.height - img.naturalHeight * scale) / 2; apply();
  }
  const loaded = () => { drawOutlines(); fit(); };
  if (img.complete && img.naturalWidth) loaded(); else img.addEventListener("load", loaded);

  // ---- zoom and pan
  function apply() { stage.style.transform = `translate(${tx}px, ${ty}px) scale(${scale})`; }
  function zoom(f, cx, cy) {
    const r = viewport.getBoundingClientRect();
    cx = cx === undefined ? r.width / 2 : cx; cy = cy === undefined ? r.height / 2 : cy;
    const ns = Math.min(16, Math.max(0.25, scale * f));
    tx = cx - (cx - tx) * ns / scale; ty = cy - (cy - ty) * ns / scale; scale = ns; apply();
  }
  viewport.addEventListener("wheel", (e) => { e.preventDefault(); const r = viewport.getBoundingClientRect(); zoom(e.deltaY < 0 ? 1.2 : 1 / 1.2, e.clientX - r.left, e.clientY - r.top); }, { passive: false });
  viewport.addEventListener("mousedown", (e) => { drag = [e.clientX - tx, e.clientY - ty]; });
  window.addEventListener("mousemove", (e) => { if (drag) { tx = e.clientX - drag[0]; ty = e.clientY - drag[1]; apply(); } });
  window.addEventListener("mouseup", () => { drag = null; });

  // ---- keys
  const levelSelects = Array.from(form.querySelectorAll("[data-level]"));
  function chooseLevel(step) {
    levelSelects.forEach((s) => s.parentElement.classList.remove("cur"));
    level = level + step;
    if (level >= levelSelects.length) level = -1;
    if (level < -1) level = levelSelects.length - 1;
    if (level >= 0) { document.getElementById("levels").open = true; levelSelects[level].parentElement.classList.add("cur"); }
    status.textContent = level >= 0 ? `grading level ${levelSelects[level].dataset.level}` : "grading overall"; status.className = "";
  }
  function toggleHeat() {
    if (!heat) return;
    heat.classList.toggle("hidden");
    const on = !heat.classList.contains("hidden");
    document.getElementById("heat-on").textContent = on ? "on" : "off";
    document.body.dataset.heatmap = on ? "on" : "off";
  }
  const shapes = { w: "wedge", b: "biconcave", c: "crush" };
  document.addEventListener("keydown", (e) => {
    if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key;
    if (document.getElementById("keys").open && k !== "?") return;  // Esc closes the dialog (the browser's own)
    if (k === "h") toggleHeat();
    else if (k === "o") svg.classList.toggle("hidden");
    else if (k === "y") setFracture(1);
    else if (k === "n") { setFracture(0); if (form.grade.value === "") form.grade.value = "0"; }
    else if (/^[0-3]$/.test(k)) {
      if (level >= 0) {
        levelSelects[level].value = k;
        setFracture(levelSelects.some((s) => Number(s.value) > 0) ? 1 : 0);
      } else { form.grade.value = k; setFracture(Number(k) > 0 ? 1 : 0); }
    }
    else if (k === "l") chooseLevel(1);
    else if (k === "L") chooseLevel(-1);
    else if (shapes[k]) form.shape.value = form.shape.value === shapes[k] ? "" : shapes[k];
    else if (k === "=" || k === "-") { const c = Number(form.confidence.value || 3) + (k === "=" ? 1 : -1); form.confidence.value = String(Math.min(5, Math.max(1, c))); }
    else if (k === "Enter") save(true);
    else if (k === "s") save(false);
    else if (k === "a") accept();
    else if (k === "j" || k === "ArrowRight") { if (data.next) go(`/case/${data.next}${qs(data.query)}`); }
    else if (k === "k" || k === "ArrowLeft") { if (data.prev) go(`/case/${data.prev}${qs(data.query)}`); }
    else if (k === "Escape") go(`/worklist${qs(data.query)}`);
    else if (k === "+") zoom(1.25);
    else if (k === "_" || k === "/") zoom(0.8);
    else if (k === "r") fit();
    else if (k === "z") { const r = viewport.getBoundingClientRect(); zoom(1 / scale, r.width / 2, r.height / 2); }
    else if (k === "?") { const d = document.getElementById("keys"); if (d.open) d.close(); else d.showModal(); }
    else return;
    e.preventDefault();
  });
  document.body.dataset.ready = "1";
})();
