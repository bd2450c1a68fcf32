// MedFakeDet page: upload an image, show both models' answers. Plain JS, no dependencies.
// api.js holds the server URL, the token and the request helpers; settings.js the localizer's
// threshold and smallest box; batch.js the batch table. One file opens here; several files or a
// folder go to the batch table, whose rows open here.
"use strict";

(function () {
  const api = window.MedFakeDet;
  const settings = window.MedFakeDetSettings;
  const ENDPOINT_SYNTHESIS = "/detect/synthesis8";
  const ENDPOINT_DENSITY = "/detect/manipulation_density";
  const ENDPOINT_EXPLAIN = "/explanations/synthesis8";
  const MAX_DISPLAY = 640; // largest side of the drawn image, CSS pixels
  const REQUERY_DELAY_MS = 250;

  const $ = (id) => document.getElementById(id);
  const el = {
    dropzone: $("dropzone"),
    input: $("file-input"),
    folderInput: $("folder-input"),
    chooseFolder: $("choose-folder"),
    showGradcam: $("show-gradcam"),
    verdictSummary: $("verdict-summary"),
    fileName: $("file-name"),
    always: $("localize-always"),
    showHeatmap: $("show-heatmap"),
    canvas: $("image-canvas"),
    caption: $("viewer-caption"),
    alert: $("error-alert"),
    alertTitle: $("error-title"),
    alertMessage: $("error-message"),
    status: $("status"),
    synthesis: $("synthesis"),
    verdictBadge: $("verdict-badge"),
    verdictReason: $("verdict-reason"),
    inDistribution: $("in-distribution"),
    resultClass: $("result-class"),
    fakeBar: $("fake-bar"),
    fakeBarFill: $("fake-bar-fill"),
    fakeValue: $("fake-value"),
    organBars: $("organ-bars"),
    classProbs: $("class-probs"),
    synthesisVersion: $("synthesis-version"),
    results: $("results"),
    density: $("density"),
    densitySkipped: $("density-skipped"),
    densitySkippedText: $("density-skipped-text"),
    runLocalizer: $("run-localizer"),
    densityResult: $("density-result"),
    densityBadge: $("density-badge"),
    densityMessage: $("density-message"),
    densityInDistribution: $("density-in-distribution"),
    presenceScore: $("presence-score"),
    boxCount: $("box-count"),
    densityParams: $("density-params"),
    boxList: $("box-list"),
    densityVersion: $("density-version"),
  };

  // Everything about the current upload; `token` makes late answers of older uploads harmless.
  const state = {
    file: null,
    preview: null, // HTMLImageElement: the browser's own decode, or the server's preview_png
    previewFrom: "none", // "browser" | "server" | "none"
    synthesis: null,
    density: null,
    heatmap: null, // HTMLImageElement of density.heatmap_png
    gradcam: null, // HTMLImageElement of the Grad-CAM heatmap_png
    token: 0,
    densityAbort: null,
  };

  // ------------------------------------------------------------------------------ helpers
  const pct = api.pct;

  function showError(title, message) {
    el.alertTitle.textContent = title;
    el.alertMessage.textContent = message;
    el.alert.hidden = false;
  }

  function clearError() {
    el.alert.hidden = true;
    el.alertMessage.textContent = "";
  }

  function setStatus(text, busy) {
    el.status.textContent = text;
    el.status.classList.toggle("busy", Boolean(busy));
  }

  // image_size may be {width, height} or [w, h]
  function sizeOf(size) {
    if (Array.isArray(size)) return { width: size[0], height: size[1] };
    if (size && size.width && size.height) return { width: size.width, height: size.height };
    return null;
  }

  // ------------------------------------------------------------------------------- canvas
  // The image's own pixel size: the server's image_size once known, else the preview's.
  function naturalSize() {
    const fromServer = state.density && sizeOf(state.density.image_size);
    if (fromServer) return fromServer;
    if (state.preview) return { width: state.preview.naturalWidth, height: state.preview.naturalHeight };
    return null;
  }

  function draw() {
    const canvas = el.canvas;
    const ctx = canvas.getContext("2d");
    const natural = naturalSize();
    const box = canvas.parentElement.getBoundingClientRect();
    const maxW = Math.max(200, Math.min(MAX_DISPLAY, box.width - 20));
    if (!natural) {
      canvas.width = maxW;
      canvas.height = Math.round(maxW * 0.75);
      ctx.fillStyle = "#1b2436";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      placeholderText(ctx, canvas, state.file ? "No preview for this file type" : "No image yet");
      canvas.dataset.boxes = "0";
      canvas.dataset.heatmap = "0";
      canvas.dataset.gradcam = "0";
      canvas.dataset.preview = state.previewFrom;
      return;
    }
    // Fit the image in MAX_DISPLAY x MAX_DISPLAY; small scans are enlarged to be readable.
    const scale = Math.min(maxW / natural.width, MAX_DISPLAY / natural.height);
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(natural.width * scale);
    const h = Math.round(natural.height * scale);
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    canvas.style.width = `${w}px`;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);

    const gradcamShown = Boolean(state.gradcam && el.showGradcam.checked);
    const heatmapShown = !gradcamShown && Boolean(state.heatmap && el.showHeatmap.checked);
    if (gradcamShown) {
      ctx.drawImage(state.gradcam, 0, 0, w, h); // Grad-CAM over the image, at its aspect
    } else if (heatmapShown) {
      // heatmap_png is the colour density already blended over the image, at the image's aspect.
      ctx.drawImage(state.heatmap, 0, 0, w, h);
    } else if (state.preview) {
      ctx.drawImage(state.preview, 0, 0, w, h);
    } else {
      ctx.fillStyle = "#1b2436";
      ctx.fillRect(0, 0, w, h);
      // Corner note, so it never hides under a box drawn in the middle.
      placeholderText(ctx, { width: w, height: h }, "No preview of this file", true);
    }

    // Boxes come in the uploaded image's pixel coordinates: scale by displayed / natural.
    const boxes = (state.density && state.density.boxes) || [];
    const sx = w / natural.width;
    const sy = h / natural.height;
    ctx.font = "600 12px system-ui, sans-serif";
    ctx.textBaseline = "top";
    boxes.forEach((b, i) => {
      const x = b.x1 * sx;
      const y = b.y1 * sy;
      const bw = (b.x2 - b.x1) * sx;
      const bh = (b.y2 - b.y1) * sy;
      // A dark outline under the yellow line keeps boxes visible on bright and dark images.
      ctx.lineWidth = 5;
      ctx.strokeStyle = "rgba(0, 0, 0, 0.55)";
      ctx.strokeRect(x, y, bw, bh);
      ctx.lineWidth = 3;
      ctx.strokeStyle = "#ffd400";
      ctx.strokeRect(x, y, bw, bh);
      const label = `${i + 1}: ${Number(b.score).toFixed(2)}`;
      const tw = ctx.measureText(label).width + 8;
      const ly = y >= 18 ? y - 18 : y + 2;
      ctx.fillStyle = "#ffd400";
      ctx.fillRect(x, ly, tw, 16);
      ctx.fillStyle = "#111";
      ctx.fillText(label, x + 4, ly + 2);
    });

    canvas.dataset.boxes = String(boxes.length);
    canvas.dataset.heatmap = heatmapShown ? "1" : "0";
    canvas.dataset.gradcam = gradcamShown ? "1" : "0";
    canvas.dataset.preview = state.previewFrom;
    canvas.setAttribute(
      "aria-label",
      `Uploaded image, ${natural.width} by ${natural.height} pixels` +
        (boxes.length ? `, ${boxes.length} suspicious region(s) outlined` : "") +
        (heatmapShown ? ", density heatmap shown" : "") +
        (gradcamShown ? ", Grad-CAM of the classifier shown" : "")
    );
    el.caption.textContent =
      `${natural.width} × ${natural.height} px shown at ${Math.round(scale * 100)}%. ` +
      "Boxes are in the uploaded image's pixel coordinates.";
  }

  function placeholderText(ctx, size, text, corner) {
    ctx.fillStyle = "#aab6c8";
    ctx.font = "13px system-ui, sans-serif";
    ctx.textAlign = corner ? "start" : "center";
    ctx.textBaseline = corner ? "bottom" : "middle";
    if (corner) ctx.fillText(text, 8, size.height - 6);
    else ctx.fillText(text, size.width / 2, size.height / 2);
    ctx.textAlign = "start";
  }

  // ------------------------------------------------------------------------------ results
  // The verdict is what a user should take from the answer; "uncertain" when the image is
  // unlike the model's training images or P(fake) is in the calibrated grey zone.
  function showVerdict(badge, verdict) {
    const [text, cls] = api.VERDICTS[verdict] || [String(verdict), ""];
    badge.textContent = text;
    badge.className = `badge ${cls}`;
  }

  // One plain sentence per model above the details: what to take from this upload.
  function renderSummary() {
    const parts = [];
    const say = (what, r) => {
      const [label, , sentence] = api.VERDICTS[r.verdict] || [r.verdict, "", ""];
      parts.push(`${what}: ${label.toUpperCase()}, ${sentence}.`);
    };
    if (state.synthesis) say("Synthesis", state.synthesis);
    if (state.density) say("Manipulation", state.density);
    el.verdictSummary.textContent = parts.join(" ");
    el.verdictSummary.hidden = parts.length === 0;
    const uncertain = [state.synthesis, state.density].some((r) => r && r.verdict === "uncertain");
    el.verdictSummary.classList.toggle("uncertain", uncertain);
  }

  function inDistributionText(r) {
    if (r.in_distribution === null || r.in_distribution === undefined) {
      return "unknown (no check in this model)";
    }
    const score = Number(r.in_distribution_score).toFixed(2);
    const like = r.in_distribution ? "like" : "UNLIKE";
    return `${score}, ${like} the training images`;
  }

  function renderSynthesis(r) {
    el.synthesis.hidden = false;
    el.resultClass.textContent = r.class_name;
    showVerdict(el.verdictBadge, r.verdict);
    el.verdictReason.textContent = r.reason || "";
    el.inDistribution.textContent = inDistributionText(r);
    const p = Number(r.fake_probability);
    el.fakeBarFill.style.width = pct(p);
    el.fakeBarFill.className = `bar-fill ${p >= 0.5 ? "fake" : "real"}`;
    el.fakeBar.setAttribute("aria-valuenow", (100 * p).toFixed(1));
    el.fakeValue.textContent = pct(p);

    el.organBars.replaceChildren(
      ...Object.entries(r.organ_probabilities || {}).map(([organ, q]) => barRow(organ, q))
    );
    const rows = Object.entries(r.probabilities || {}).map(([name, q]) => {
      const tr = document.createElement("tr");
      if (name === r.class_name) tr.className = "top";
      const a = document.createElement("td");
      a.textContent = name;
      const b = document.createElement("td");
      b.textContent = pct(Number(q));
      tr.append(a, b);
      return tr;
    });
    el.classProbs.replaceChildren(...rows);
    el.synthesisVersion.textContent = r.model_version || "?";
  }

  function barRow(label, p) {
    const row = document.createElement("div");
    row.className = "bar-row";
    const name = document.createElement("span");
    name.className = "bar-label";
    name.textContent = label;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-label", `Probability of ${label}`);
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", (100 * p).toFixed(1));
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    fill.style.width = pct(p);
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = pct(p);
    row.append(name, bar, value);
    return row;
  }

  function renderDensitySkipped(organ) {
    el.density.hidden = false;
    el.densityResult.hidden = true;
    el.densitySkipped.hidden = false;
    el.densitySkippedText.textContent =
      `The localizer was trained on brain MRI; this image was classified as ${organ}, ` +
      "so it was not run.";
  }

  function renderDensity(r) {
    el.density.hidden = false;
    el.densitySkipped.hidden = true;
    el.densityResult.hidden = false;
    showVerdict(el.densityBadge, r.verdict);
    el.densityMessage.textContent = r.message || "";
    el.densityInDistribution.textContent = inDistributionText(r);
    el.presenceScore.textContent = Number(r.presence_score).toFixed(3);
    el.boxCount.textContent = String(r.count);
    el.densityParams.textContent = `${r.threshold} / ${r.min_area} px`;
    el.boxList.replaceChildren(
      ...(r.boxes || []).map((b, i) => {
        const li = document.createElement("li");
        const f = (v) => Math.round(Number(v));
        li.textContent =
          `(${f(b.x1)}, ${f(b.y1)}) – (${f(b.x2)}, ${f(b.y2)}), ` +
          `score ${Number(b.score).toFixed(3)}`;
        li.id = `box-${i + 1}`;
        return li;
      })
    );
    el.densityVersion.textContent = r.model_version || "?";
  }

  // ----------------------------------------------------------------------------- requests
  async function runDensity() {
    if (!state.file) return;
    const token = state.token;
    if (state.densityAbort) state.densityAbort.abort();
    const abort = new AbortController();
    state.densityAbort = abort;
    const fields = { return_density: "true", ...settings.fields() }; // thr once moved
    setStatus("Localizing manipulated regions…", true);
    try {
      const result = await api.postForm(
        ENDPOINT_DENSITY,
        api.imageForm(state.file, fields),
        abort.signal
      );
      if (token !== state.token) return;
      clearError();
      state.density = result;
      state.heatmap = result.heatmap_png
        ? await api.loadImage(`data:image/png;base64,${result.heatmap_png}`)
        : null;
      if (token !== state.token) return;
      settings.fromAnswer(result);
      renderDensity(result);
      renderSummary();
      draw();
      setStatus("Done.", false);
    } catch (err) {
      if (err.name === "AbortError" || token !== state.token) return;
      showError(errorTitle("Localizer", err), err.message);
      setStatus("The localizer request failed.", false);
    } finally {
      if (state.densityAbort === abort) state.densityAbort = null;
    }
  }

  // Grad-CAM of the classifier: asked for when the toggle is on, once per upload.
  async function runGradcam() {
    if (!state.file || state.gradcam || !el.showGradcam.checked) return;
    const token = state.token;
    try {
      const result = await api.postForm(ENDPOINT_EXPLAIN, api.imageForm(state.file));
      if (token !== state.token) return;
      state.gradcam = await api.loadImage(`data:image/png;base64,${result.heatmap_png}`);
      if (token !== state.token) return;
      draw();
    } catch (err) {
      if (token !== state.token) return;
      showError(errorTitle("Grad-CAM", err), err.message);
    }
  }

  function errorTitle(what, err) {
    return err.status ? `${what}: the server answered ${err.status}` : `${what}: request failed`;
  }

  async function handleFile(file) {
    if (!file) return;
    state.token += 1;
    const token = state.token;
    if (state.densityAbort) state.densityAbort.abort();
    Object.assign(state, {
      file,
      preview: null,
      previewFrom: "none",
      synthesis: null,
      density: null,
      heatmap: null,
      gradcam: null,
    });
    clearError();
    el.synthesis.hidden = true;
    el.density.hidden = true;
    el.verdictSummary.hidden = true;
    el.fileName.textContent = `${file.name} (${(file.size / 1024).toFixed(1)} KiB)`;

    const url = URL.createObjectURL(file);
    state.preview = await api.loadImage(url); // null for DICOM/TIFF: the server's preview
    URL.revokeObjectURL(url);
    if (token !== state.token) return;
    state.previewFrom = state.preview ? "browser" : "none";
    draw();

    setStatus("Classifying…", true);
    let synthesis;
    try {
      // Ask for the server's preview only when the browser could not show the file.
      const fields = state.preview ? {} : { preview: "true" };
      synthesis = await api.postForm(ENDPOINT_SYNTHESIS, api.imageForm(file, fields));
    } catch (err) {
      if (token !== state.token) return;
      showError(errorTitle("Synthesis detector", err), err.message);
      setStatus("The image could not be analysed.", false);
      return;
    }
    if (token !== state.token) return;
    if (synthesis.preview_png) {
      state.preview = await api.loadImage(`data:image/png;base64,${synthesis.preview_png}`);
      state.previewFrom = state.preview ? "server" : "none";
      if (token !== state.token) return;
      draw();
    }
    state.synthesis = synthesis;
    renderSynthesis(synthesis);
    renderSummary();
    runGradcam();
    if (synthesis.organ === "brain" || el.always.checked) {
      await runDensity();
    } else {
      renderDensitySkipped(synthesis.organ);
      setStatus("Done.", false);
    }
  }

  // One file opens here; several (or a folder) fill the batch table.
  function handleFiles(files) {
    const list = Array.from(files || []);
    if (list.length === 1) handleFile(list[0]);
    else if (list.length > 1) api.runBatch(list, el.always.checked);
  }
  api.showFile = (file) => {
    handleFile(file);
    el.results.focus();
  };

  // Files of a dropped folder (and its sub-folders), through the entries API.
  function readEntry(entry) {
    if (entry.isFile) return new Promise((resolve) => entry.file(resolve, () => resolve(null)));
    if (!entry.isDirectory) return Promise.resolve(null);
    const reader = entry.createReader();
    const all = [];
    return new Promise((resolve) => {
      const next = () =>
        reader.readEntries(async (entries) => {
          if (!entries.length) {
            const files = await Promise.all(all.map(readEntry));
            resolve(files.flat().filter(Boolean));
            return;
          }
          all.push(...entries.filter((e) => !e.name.startsWith(".")));
          next();
        }, () => resolve([]));
      next();
    });
  }

  async function droppedFiles(dataTransfer) {
    const entries = Array.from(dataTransfer.items || [])
      .map((item) => (item.webkitGetAsEntry ? item.webkitGetAsEntry() : null))
      .filter(Boolean);
    if (!entries.length || entries.every((e) => e.isFile)) return Array.from(dataTransfer.files);
    const files = await Promise.all(entries.map(readEntry));
    return files.flat().filter(Boolean);
  }

  // ------------------------------------------------------------------------------- events
  el.dropzone.addEventListener("click", () => el.input.click());
  el.dropzone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      el.input.click();
    }
  });
  el.input.addEventListener("change", () => handleFiles(el.input.files));
  el.chooseFolder.addEventListener("click", () => el.folderInput.click());
  el.folderInput.addEventListener("change", () => handleFiles(el.folderInput.files));
  ["dragenter", "dragover"].forEach((type) =>
    el.dropzone.addEventListener(type, (e) => {
      e.preventDefault();
      el.dropzone.classList.add("dragover");
    })
  );
  ["dragleave", "drop"].forEach((type) =>
    el.dropzone.addEventListener(type, (e) => {
      e.preventDefault();
      el.dropzone.classList.remove("dragover");
    })
  );
  el.dropzone.addEventListener("drop", async (e) => {
    if (e.dataTransfer) handleFiles(await droppedFiles(e.dataTransfer));
  });
  // A file dropped next to the zone must not navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  let requeryTimer = null;
  function requery() {
    clearTimeout(requeryTimer);
    requeryTimer = setTimeout(() => {
      if (state.density) runDensity(); // only once the localizer has answered for this image
    }, REQUERY_DELAY_MS);
  }
  settings.onChange(requery); // the slider, its reset button, the smallest box
  el.showHeatmap.addEventListener("change", draw);
  el.showGradcam.addEventListener("change", () => {
    draw();
    runGradcam();
  });
  el.always.addEventListener("change", () => {
    if (el.always.checked && state.synthesis && !state.density) runDensity();
  });
  el.runLocalizer.addEventListener("click", runDensity);
  window.addEventListener("resize", () => {
    if (state.file) draw();
  });

  draw();
})();
