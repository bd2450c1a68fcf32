// MedFakeDet page, batch mode: many files (or a folder) -> one table row per file with the
// verdict, P(fake), organ, the localizer's verdict and its box count; Enter or a click on a row
// opens it in the single-image view; the results export as CSV or JSON.
"use strict";

(function () {
  const api = window.MedFakeDet;
  const CONCURRENCY = 4; // requests in flight: enough for the server to batch them
  const IMAGE_NAME = /\.(png|jpe?g|tiff?|bmp|dcm|dicom|ima)$|^[^.]+$/i; // DICOM: often no ext.
  const $ = (id) => document.getElementById(id);
  const el = {
    section: $("batch"),
    status: $("batch-status"),
    rows: $("batch-rows"),
    csv: $("export-csv"),
    json: $("export-json"),
  };
  let rows = [];
  let run = 0; // a newer batch makes the answers of an older one harmless

  const fixed = (v, digits) => (v === null || v === undefined ? "" : Number(v).toFixed(digits));

  // The flat record of one file: the table, the CSV and the JSON all read it.
  function record(row) {
    const s = row.synthesis;
    const d = row.density;
    return {
      file: row.name,
      status: row.error ? "error" : row.synthesis ? "ok" : "pending",
      error: row.error || null,
      verdict: s ? s.verdict : null,
      fake_probability: s ? s.fake_probability : null,
      organ: s ? s.organ : null,
      class_name: s ? s.class_name : null,
      in_distribution_score: s ? s.in_distribution_score : null,
      localizer_verdict: d ? d.verdict : null,
      count: d ? d.count : null,
      boxes: d ? d.boxes : null,
      model_version: s ? s.model_version : null,
      model_sha256: s ? s.model_sha256 || null : null,
      localizer_version: d ? d.model_version : null,
      localizer_sha256: d ? d.model_sha256 || null : null,
    };
  }

  function badge(verdict) {
    const span = document.createElement("span");
    const [text, cls] = api.VERDICTS[verdict] || [verdict || "", ""];
    span.className = `badge ${cls}`;
    span.textContent = text;
    return span;
  }

  function renderRow(row) {
    const r = record(row);
    const cells = [];
    const td = (content) => {
      const cell = document.createElement("td");
      if (content instanceof Node) cell.append(content);
      else cell.textContent = content;
      cells.push(cell);
      return cell;
    };
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = r.file;
    cells.push(name);
    if (r.status === "error") {
      td(badge(null)).firstChild.textContent = "Error";
      td(r.error).colSpan = 4;
    } else if (r.status === "pending") {
      td("…");
      td("");
      td("");
      td("");
      td("");
    } else {
      td(badge(r.verdict));
      td(api.pct(r.fake_probability));
      td(r.organ);
      td(r.localizer_verdict ? badge(r.localizer_verdict) : "not run");
      td(r.count === null ? "–" : String(r.count));
    }
    row.tr.replaceChildren(...cells);
    row.tr.dataset.status = r.status;
    row.tr.dataset.verdict = r.verdict || "";
  }

  function summary() {
    const done = rows.filter((r) => r.synthesis || r.error);
    const count = (f) => rows.filter(f).length;
    const text =
      `${done.length} of ${rows.length} files done: ` +
      `${count((r) => r.synthesis && r.synthesis.verdict === "fake")} fake, ` +
      `${count((r) => r.density && r.density.verdict === "manipulated")} manipulated, ` +
      `${count((r) => [r.synthesis, r.density].some((a) => a && a.verdict === "uncertain"))} ` +
      `uncertain, ${count((r) => r.error)} errors.`;
    el.status.textContent = text;
    const finished = done.length === rows.length;
    el.status.classList.toggle("busy", !finished);
    el.csv.disabled = el.json.disabled = !finished;
  }

  async function scan(row, always, token) {
    let s = null;
    try {
      s = await api.postForm("/detect/synthesis8", api.imageForm(row.file));
      if (token !== run) return;
      if (s.organ === "brain" || always) {
        row.density = await api.postForm("/detect/manipulation_density", api.imageForm(row.file));
      }
    } catch (err) {
      row.error = err.status ? `HTTP ${err.status}: ${err.message}` : err.message;
    }
    row.synthesis = s; // the row counts as done only now, with both answers
    if (token !== run) return;
    renderRow(row);
    summary();
  }

  function open(row) {
    el.rows.querySelectorAll("tr[aria-selected]").forEach((tr) => tr.removeAttribute("aria-selected"));
    row.tr.setAttribute("aria-selected", "true");
    api.showFile(row.file);
  }

  async function runBatch(files, always) {
    run += 1;
    const token = run;
    const picked = files.filter((f) => IMAGE_NAME.test(f.name) && !f.name.startsWith("."));
    rows = picked.map((file) => {
      const tr = document.createElement("tr");
      tr.tabIndex = 0;
      const row = { file, name: file.webkitRelativePath || file.name, tr };
      tr.addEventListener("click", () => open(row));
      tr.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          open(row);
        }
      });
      return row;
    });
    rows.forEach(renderRow);
    el.rows.replaceChildren(...rows.map((r) => r.tr));
    el.section.hidden = false;
    summary();
    const queue = rows.slice();
    const worker = async () => {
      while (queue.length && token === run) await scan(queue.shift(), always, token);
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  }

  function csvCell(value) {
    if (value === null || value === undefined) return "";
    const text = typeof value === "object" ? JSON.stringify(value) : String(value);
    return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  }

  function download(name, type, text) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  el.csv.addEventListener("click", () => {
    const records = rows.map(record);
    const columns = Object.keys(records[0] || record({}));
    const lines = [columns.join(",")].concat(
      records.map((r) => columns.map((c) => csvCell(r[c])).join(","))
    );
    download("medfakedet-batch.csv", "text/csv", lines.join("\n") + "\n");
  });
  el.json.addEventListener("click", () => {
    const full = rows.map((r) => ({ ...record(r), synthesis: r.synthesis || null, localization: r.density || null }));
    download("medfakedet-batch.json", "application/json", JSON.stringify(full, null, 2) + "\n");
  });

  api.runBatch = runBatch;
})();
