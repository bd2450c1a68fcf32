// MedFakeDet page: the localizer's settings, the box threshold slider and the smallest box.
// They start at the model's calibrated values, read from its public model card
// (GET /detect/manipulation_density) when the page opens and whenever the Server or Token
// changes, so the slider shows the threshold the server applies before any upload. A server
// without a card (an older version) gives them with its first answer instead. thr is sent only
// once the user has moved the slider, min_area only when the field is filled: otherwise the
// server applies its own calibrated values, as curl and the CLI get them.
"use strict";

window.MedFakeDetSettings = (function () {
  const api = window.MedFakeDet;
  const CARD = "/detect/manipulation_density";
  const $ = (id) => document.getElementById(id);
  const thr = $("thr");
  const thrValue = $("thr-value");
  const reset = $("thr-reset");
  const minArea = $("min-area");
  let calibrated = null; // the calibrated box threshold, once the card or an answer said it
  let moved = false; // true once the user moved the slider: only then is thr sent
  let changed = () => {}; // app.js asks the server again
  let cardRequest = 0; // makes a late card of an earlier server harmless

  function show(value) {
    thr.value = String(value);
    thrValue.textContent = Number(value).toFixed(2);
  }

  // `source`: "card" or "answer" (data-calibrated-from on the slider says which one it was).
  function setCalibrated(threshold, smallest, source) {
    calibrated = Number(threshold);
    if (!moved) show(calibrated);
    thr.disabled = false;
    thr.dataset.calibratedFrom = source;
    if (smallest !== undefined) minArea.placeholder = String(smallest);
  }

  // data-card on the slider: "pending" while the card is asked for, then "ok" or "none".
  async function loadCard() {
    const request = ++cardRequest;
    calibrated = null; // another server may be calibrated otherwise: its card or answer says
    thr.dataset.card = "pending";
    let card = null;
    try {
      card = await api.getJson(CARD);
    } catch (_) {
      // No card (an older server), no server yet or a missing token: the first answer says.
    }
    if (request !== cardRequest) return;
    if (!card || !card.threshold || !card.min_area) {
      thr.dataset.card = "none";
      return;
    }
    thr.min = String(card.threshold.min);
    thr.max = String(card.threshold.max);
    minArea.max = String(card.min_area.max);
    setCalibrated(card.threshold.default, card.min_area.default, "card");
    thr.dataset.card = "ok";
  }

  // Every answer of the localizer carries the thr and min_area it used.
  function fromAnswer(r) {
    if (calibrated === null && !moved) setCalibrated(r.threshold, undefined, "answer");
    if (minArea.value === "") minArea.placeholder = String(r.min_area); // calibrated
    reset.hidden = !moved;
  }

  // The form fields to send besides the image.
  function fields() {
    const out = {};
    if (moved) out.thr = thr.value;
    if (minArea.value !== "") out.min_area = minArea.value;
    return out;
  }

  thr.addEventListener("input", () => {
    moved = true;
    reset.hidden = false;
    thrValue.textContent = Number(thr.value).toFixed(2);
    changed();
  });
  reset.addEventListener("click", () => {
    moved = false;
    reset.hidden = true;
    if (calibrated !== null) show(calibrated);
    thr.focus();
    changed();
  });
  minArea.addEventListener("change", () => changed());
  api.onServerChange(loadCard);
  loadCard();

  return {
    fields,
    fromAnswer,
    onChange(fn) {
      changed = fn;
    },
  };
})();
