// MedFakeDet page: what the single-image view (app.js), the localizer's settings (settings.js)
// and the batch table (batch.js) share: the server's URL, the token, the request helpers and
// the words for the verdicts.
// Endpoints (nginx in front of TorchServe):
//   POST /detect/synthesis8            multipart: image, preview
//   POST /detect/manipulation_density  multipart: image, thr, min_area, return_density, preview
//   POST /explanations/synthesis8      multipart: image (Grad-CAM)
//   GET  /detect/manipulation_density  the model card: version, calibrated thr and min_area
"use strict";

window.MedFakeDet = (function () {
  const serverInput = document.getElementById("server-url");
  const tokenInput = document.getElementById("token");
  const SERVER_KEY = "medfakedet.server";
  const TOKEN_KEY = "medfakedet.token";

  function stored(storage, key) {
    try {
      return window[storage].getItem(key) || "";
    } catch (_) {
      return ""; // storage can be unavailable (privacy settings, some file:// setups)
    }
  }

  function store(storage, key, value) {
    try {
      if (value) window[storage].setItem(key, value);
      else window[storage].removeItem(key);
    } catch (_) {
      /* not kept: the field still works for this page */
    }
  }

  // ?server=URL first, then the last URL used; empty means this page's own server.
  serverInput.value =
    new URLSearchParams(window.location.search).get("server") || stored("localStorage", SERVER_KEY);
  tokenInput.value = stored("sessionStorage", TOKEN_KEY); // the token: this tab only
  serverInput.addEventListener("change", () =>
    store("localStorage", SERVER_KEY, serverInput.value.trim())
  );
  tokenInput.addEventListener("change", () =>
    store("sessionStorage", TOKEN_KEY, tokenInput.value.trim())
  );

  // The base URL requests go to: the Server field, else this page's origin.
  function base() {
    const value = serverInput.value.trim().replace(/\/+$/, "");
    if (value) {
      if (!/^https?:\/\/[^/]/i.test(value)) {
        throw new Error(`The server URL must start with http:// or https:// (got "${value}").`);
      }
      return value;
    }
    if (window.location.protocol === "file:") {
      throw new Error(
        "This page was opened from a file: enter the server's URL under Server " +
          "(e.g. http://127.0.0.1:8000)."
      );
    }
    return "";
  }

  // Call `fn` when the Server URL or the Token changes (the page asks the new server again).
  function onServerChange(fn) {
    serverInput.addEventListener("change", fn);
    tokenInput.addEventListener("change", fn);
  }

  // POST a multipart form; resolve with the JSON body or throw an Error whose message is the
  // server's own (the handlers answer {error, status}, TorchServe {code, type, message}, nginx
  // may answer HTML).
  function postForm(path, form, signal) {
    return request(path, { method: "POST", body: form, signal });
  }

  // GET a JSON document of the API (a model card), with the same errors as postForm.
  function getJson(path, signal) {
    return request(path, { method: "GET", signal });
  }

  async function request(path, init) {
    const url = base() + path; // throws when the URL is unusable: shown like a failed request
    const headers = {};
    const token = tokenInput.value.trim();
    if (token) headers.Authorization = `Bearer ${token}`;
    let response;
    try {
      response = await fetch(url, { ...init, headers });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new Error(`Could not reach the server at ${url} (${err.message}).`);
    }
    const text = await response.text();
    let body = null;
    try {
      body = JSON.parse(text);
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      let message = body && (body.error || body.message);
      if (!message) {
        const plain = text.replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim();
        message = plain.slice(0, 300) || response.statusText || "no details";
      }
      if (/token/i.test(message) && !token) message += " (enter the token under Server)";
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    if (!body || typeof body !== "object") {
      throw new Error(`The server answered ${response.status} without a JSON result.`);
    }
    return body;
  }

  function imageForm(file, fields) {
    const form = new FormData();
    form.append("image", file, file.name);
    Object.entries(fields || {}).forEach(([k, v]) => form.append(k, v));
    return form;
  }

  function loadImage(src) {
    return new Promise((resolve) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => resolve(null);
      img.src = src;
    });
  }

  // The verdict is what a user should take from an answer: [label, css class, plain sentence].
  const VERDICTS = {
    real: ["Real", "real", "the classifier calls it a real scan"],
    fake: ["Synthetic", "fake", "the classifier calls it synthetic"],
    manipulated: ["Manipulated", "fake", "the localizer finds manipulated regions"],
    untouched: ["No manipulation", "real", "the localizer finds no manipulation"],
    uncertain: ["Uncertain", "uncertain", "the model cannot tell: do not rely on this answer"],
  };

  const pct = (p) => `${(100 * p).toFixed(1)}%`;

  return { base, postForm, getJson, onServerChange, imageForm, loadImage, VERDICTS, pct };
})();
