
(() => {
  "use strict";
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const COLS = DATA.columns, ROWS = DATA.rows, CFG = DATA.config, URLS = DATA.urls;
  const ROLES = CFG.roles || {};
  const IDX = new Map(COLS.map((c, i) => [c, i]));
  const MAX_BOXES = 20;
  const get = (row, name) => (name != null && IDX.has(name) ? row[IDX.get(name)] : null);
  const isNum = (v) => typeof v === "number" && isFinite(v);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = String(text);
    return e;
  };
  const fmtNum = (v) => (Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4))));
  const fmt = (v) => {
    if (v == null) return "—";
    if (typeof v === "string") return v;
    if (isNum(v)) return fmtNum(v);
    if (Array.isArray(v) && v.length && v.every(isNum)) return "[" + v.map(fmtNum).join(", ") + "]";
    return JSON.stringify(v);
  };
  const short = (v, n) => { const s = fmt(v); return s.length > n ? s.slice(0, n) + "…" : s; };
  const asList = (v) => (Array.isArray(v) ? v : v == null ? [] : [v]);
  const asBoxes = (v) => {
    if (!Array.isArray(v)) return [];
    if (v.length === 4 && v.every(isNum)) return [v];
    return v.map((b) => (Array.isArray(b) && b.length >= 4 && b.slice(0, 4).every(isNum) ? b : null));
  };
  const isZeroBox = (b) => !b || b.slice(0, 4).every((v) => v === 0);
  const isImage = (v) => typeof v === "string" && Object.prototype.hasOwnProperty.call(URLS, v);
  const errorOf = (row) => { const e = get(row, CFG.errorColumn); return e == null || e === "" ? null : e; };

  // a box as [x1, y1, x2, y2] in pixels of a w x h frame, or null; normalized: true, false or null (guess)
  function toRect(box, format, w, h, normalized) {
    let [a, b, c, d] = box.slice(0, 4).map(Number);
    const fractions = [a, b, c, d].every((v) => v >= 0 && v <= 1.0) && (c > 0 || d > 0);
    if (normalized === true || (normalized == null && fractions)) { a *= w; c *= w; b *= h; d *= h; }
    let r;
    if (format === "xywh") r = [a, b, a + c, b + d];
    else if (format === "cxcywh") r = [a - c / 2, b - d / 2, a + c / 2, b + d / 2];
    else r = c > a && d > b ? [a, b, c, d] : [a, b, a + c, b + d];
    r = [Math.max(0, r[0]), Math.max(0, r[1]), Math.min(w, r[2]), Math.min(h, r[3])];
    return r[2] > r[0] && r[3] > r[1] ? r : null;
  }

  // overlays in a w x h pixel frame, placed in percent so they follow the image's displayed size
  function drawBoxes(fig, w, h, overlays) {
    if (!w || !h) return;
    for (const o of overlays) {
      const r = toRect(o.box, o.format, w, h, o.normalized);
      if (!r) continue;
      const d = el("div", "bx" + (o.red ? " red" : ""));
      d.style.left = (100 * r[0] / w) + "%";
      d.style.top = (100 * r[1] / h) + "%";
      d.style.width = (100 * (r[2] - r[0]) / w) + "%";
      d.style.height = (100 * (r[3] - r[1]) / h) + "%";
      if (o.label != null) d.append(el("span", null, o.label));
      fig.append(d);
    }
  }

  function figure(path, overlays, size) {
    const fig = el("div", "fig" + (size ? " " + size : ""));
    if (typeof path !== "string" || !path) { fig.append(el("div", "missing", "no image")); return fig; }
    const url = URLS[path];
    if (!url) {
      fig.classList.add("broken");
      fig.append(el("div", "missing", "image not found: " + path));
      return fig;
    }
    const link = el("a");
    link.href = url;
    link.target = "_blank";
    link.rel = "noopener";
    const img = el("img");
    img.loading = "lazy";
    img.decoding = "async";
    img.alt = path;
    img.title = path;
    if (overlays && overlays.length) {
      img.addEventListener("load", () => drawBoxes(fig, img.naturalWidth, img.naturalHeight, overlays));
    }
    img.addEventListener("error", () => {
      fig.classList.add("broken");
      fig.replaceChildren(el("div", "missing", "image failed to load: " + path));
    });
    img.src = url;
    link.append(img);
    fig.append(link);
    return fig;
  }

  function value(v, size) {
    if (isImage(v)) return figure(v, [], size || "thumb");
    if (Array.isArray(v) && v.length && v.every(isImage)) {
      const t = el("div", "thumbs");
      v.forEach((p) => t.append(figure(p, [], "thumb")));
      return t;
    }
    return el("div", "v", short(v, 4000));
  }

  function kvTable(row, names) {
    const kv = el("div", "kv");
    for (const name of names) {
      kv.append(el("div", "k", name));
      const v = value(get(row, name));
      v.classList.add("v");
      kv.append(v);
    }
    return kv;
  }

  function allFields(row) {
    const det = el("details", "fields");
    det.append(el("summary", null, "all fields (" + COLS.length + ")"));
    det.addEventListener("toggle", () => {
      if (det.open && det.childElementCount === 1) det.append(kvTable(row, COLS));
    });
    return det;
  }

  const SHOWN = new Set([...Object.values(ROLES), ...(CFG.perBoxColumns || []), CFG.errorColumn]);

  function baseCard(row, i) {
    const error = errorOf(row);
    const card = el("article", "row-card" + (error ? " has-error" : ""));
    card.dataset.row = String(i);
    const head = el("div", "row-head");
    head.append(el("span", "row-no", "#" + (i + 1)));
    let chips = 0;
    for (const name of COLS) {
      if (SHOWN.has(name) || chips >= 8) continue;
      const v = get(row, name);
      const shortText = typeof v === "string" && v.length <= 40 && !/[\\/]/.test(v);  // not a path
      if (!(isNum(v) || typeof v === "boolean" || shortText)) continue;
      const chip = el("span", "chip");
      chip.append(el("b", null, name), document.createTextNode(fmt(v)));
      head.append(chip);
      chips++;
    }
    card.append(head);
    if (error) card.append(el("div", "error", "error: " + error));
    return card;
  }

  function regionCard(row, i) {
    const card = baseCard(row, i);
    const body = el("div", "rc-body");
    let path = get(row, ROLES.image);
    let overlays = [];
    if (!path && ROLES.original) {
      path = get(row, ROLES.original);
      asBoxes(get(row, ROLES.normalizedBoxes)).forEach((b, k) => {
        if (b && !isZeroBox(b)) overlays.push({ box: b, label: k + 1, format: "xyxy", normalized: true });
      });
    }
    if (path || !errorOf(row)) body.append(figure(path, overlays));
    const side = el("div", "side");
    side.append(el("div", "label", "Answer"), el("div", "answer", fmt(get(row, ROLES.answer))));
    const boxes = asBoxes(get(row, ROLES.boxes));
    if (boxes.length) {
      side.append(el("div", "label", "Boxes (" + boxes.length + ")"));
      const ol = el("ol", "boxes");
      boxes.forEach((b) => ol.append(el("li", null, fmt(b))));
      side.append(ol);
    }
    const dropped = get(row, ROLES.dropped);
    if (Array.isArray(dropped) && dropped.length) {
      side.append(el("div", "label", "Dropped boxes"), el("div", "text", dropped.map(fmt).join("\n")));
    }
    const prompt = get(row, ROLES.prompt);
    if (prompt != null) side.append(el("div", "label", "Prompt"), el("div", "prompt", fmt(prompt)));
    body.append(side);
    card.append(body, allFields(row));
    return card;
  }

  const loaded = (img) => new Promise((done) => {
    if (img.complete && img.naturalWidth) done();
    else img.addEventListener("load", done, { once: true });
  });

  // Img-Diff addresses both images in image 1's pixels (image 2 is resized to image 1's size)
  function pairFigures(p1, p2, overlay) {
    const f1 = figure(p1, [], "small"), f2 = figure(p2, [], "small");
    const i1 = f1.querySelector("img"), i2 = f2.querySelector("img");
    if (!overlay.length) return [f1, f2];
    const frame = i1 ? loaded(i1).then(() => [i1.naturalWidth, i1.naturalHeight])
      : i2 ? loaded(i2).then(() => [i2.naturalWidth, i2.naturalHeight]) : null;
    if (frame) {
      if (i1) frame.then(([w, h]) => drawBoxes(f1, w, h, overlay));
      if (i2) Promise.all([frame, loaded(i2)]).then(([[w, h]]) => drawBoxes(f2, w, h, overlay));
    }
    return [f1, f2];
  }

  const SKIP_FIELDS = new Set(["index", "kept", "dropped_at", "drop_reason", "bbox", "bbox_xyxy"]);

  function scoreChips(names) {
    const chips = el("div", "scores");
    for (const [name, v] of names) chips.append(el("span", "score", name + " " + fmt(v)));
    return chips;
  }

  function diffCard(row, i) {
    const card = baseCard(row, i);
    let boxes = asBoxes(get(row, ROLES.boxes));
    const cap1 = asList(get(row, ROLES.caption1)), cap2 = asList(get(row, ROLES.caption2));
    const diffs = asList(get(row, ROLES.diff));
    const p1 = get(row, ROLES.image1), p2 = get(row, ROLES.image2);
    const decisions = asList(get(row, ROLES.decisions)).filter((d) => d && typeof d === "object");
    const kept = decisions.filter((d) => d.kept);
    const perBox = (CFG.perBoxColumns || []).filter((c) => ![ROLES.caption1, ROLES.caption2, ROLES.diff].includes(c));
    const scores = new Set(CFG.scoreColumns || []);
    let n = Math.max(boxes.length, cap1.length, cap2.length, diffs.length);
    // the seed's "nothing kept" result: one zero box with empty captions
    if (boxes.every(isZeroBox) && diffs.every((d) => !d) && !kept.length) n = 0;
    const records = kept.length === n ? kept : [];
    if (n === 0) {
      if (p1 || p2) {
        const pair = el("div", "pair");
        pair.append(...pairFigures(p1, p2, []));
        card.append(pair);
      }
      card.append(el("div", "label", "no kept boxes"));
    }
    for (let k = 0; k < Math.min(n, MAX_BOXES); k++) {
      const box = boxes[k], record = records[k];
      const sec = el("section", "diff-box");
      sec.dataset.box = String(k);
      sec.append(el("div", "box-title", "Box " + (k + 1) + (box ? "  " + fmt(box) : "")));
      let overlay = [];
      if (record && Array.isArray(record.bbox_xyxy) && !isZeroBox(record.bbox_xyxy)) {
        overlay = [{ box: record.bbox_xyxy, format: "xyxy", normalized: false, red: true }];
      } else if (box && !isZeroBox(box)) {
        overlay = [{ box: box, format: CFG.boxFormat, normalized: CFG.boxNormalized, red: true }];
      }
      const figs = pairFigures(p1, p2, overlay);
      const pair = el("div", "pair");
      [[figs[0], cap1[k], "Region caption 1"], [figs[1], cap2[k], "Region caption 2"]].forEach(([f, c, label]) => {
        const col = el("div", "pair-col");
        col.append(f, el("div", "label", label), el("div", "text caption", fmt(c)));
        pair.append(col);
      });
      sec.append(pair, el("div", "label", "Difference caption"), el("div", "diff-caption", fmt(diffs[k])));
      const chips = [], rest = [];
      if (record) {
        for (const [name, v] of Object.entries(record)) if (!SKIP_FIELDS.has(name) && isNum(v)) chips.push([name, v]);
      }
      for (const name of perBox) {
        const v = asList(get(row, name))[k];
        if (scores.has(name)) chips.push([name, v]);
        else rest.push(name);
      }
      if (chips.length) sec.append(scoreChips(chips));
      if (rest.length) {
        const kv = el("div", "kv");
        for (const name of rest) {
          kv.append(el("div", "k", name));
          const v = value(asList(get(row, name))[k], "panel");
          v.classList.add("v");
          kv.append(v);
        }
        sec.append(kv);
      }
      card.append(sec);
    }
    if (n > MAX_BOXES) card.append(el("div", "label", (n - MAX_BOXES) + " more boxes not shown"));
    const dropped = decisions.filter((d) => !d.kept);
    if (dropped.length) {
      const det = el("details", "dropped");
      det.append(el("summary", null, "dropped candidate boxes (" + dropped.length + ")"));
      const ul = el("ul");
      for (const d of dropped) {
        const li = el("li", null, fmt(d.bbox) + " dropped at " + fmt(d.dropped_at) + ": " + fmt(d.drop_reason));
        const nums = Object.entries(d).filter(([name, v]) => !SKIP_FIELDS.has(name) && isNum(v));
        if (nums.length) li.append(scoreChips(nums));
        ul.append(li);
      }
      det.append(ul);
      card.append(det);
    }
    card.append(allFields(row));
    return card;
  }

  function genericCard(row, i) {
    const card = baseCard(row, i);
    const images = [...(CFG.imageColumns || []), ...(CFG.imageListColumns || [])];
    if (images.length) {
      const t = el("div", "thumbs");
      for (const name of images) asList(get(row, name)).forEach((p) => t.append(figure(p, [], "small")));
      card.append(t);
    }
    card.append(kvTable(row, COLS.filter((c) => !images.includes(c) && c !== CFG.errorColumn)));
    return card;
  }

  const makeCard = { region_caption: regionCard, imgdiff: diffCard }[CFG.kind] || genericCard;

  // -- filtering and paging ------------------------------------------------------------------
  const rowsEl = document.getElementById("rows");
  const search = document.getElementById("search");
  const errorsOnly = document.getElementById("errors-only");
  const pageSizeEl = document.getElementById("page-size");
  const countEl = document.getElementById("count");
  const all = ROWS.map((_, i) => i);
  let filtered = all, page = 0, pageSize = CFG.pageSize || 50, haystack = null;

  function textOf(row) {
    let s = "";
    for (const v of row) if (v != null) s += (typeof v === "string" ? v : JSON.stringify(v)) + "\n";
    return s.toLowerCase();
  }

  function applyFilter() {
    const terms = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    const onlyErrors = errorsOnly.checked;
    if (!terms.length && !onlyErrors) filtered = all;
    else {
      if (terms.length && !haystack) haystack = ROWS.map(textOf);
      filtered = all.filter((i) => (!onlyErrors || errorOf(ROWS[i]))
        && terms.every((t) => haystack[i].includes(t)));
    }
    page = 0;
    render();
  }

  function render() {
    const pages = Math.max(1, Math.ceil(filtered.length / pageSize));
    page = Math.min(Math.max(0, page), pages - 1);
    const start = page * pageSize, end = Math.min(filtered.length, start + pageSize);
    const frag = document.createDocumentFragment();
    for (let j = start; j < end; j++) frag.append(makeCard(ROWS[filtered[j]], filtered[j]));
    if (!filtered.length) frag.append(el("div", "empty", "No rows match."));
    rowsEl.replaceChildren(frag);
    const totalNote = DATA.total > ROWS.length ? " (first " + ROWS.length + " of " + DATA.total + " in the file)" : "";
    countEl.textContent = (filtered.length === ROWS.length ? ROWS.length + " rows"
      : filtered.length + " of " + ROWS.length + " rows match") + totalNote;
    const info = filtered.length ? "rows " + (start + 1) + "–" + end + " · page " + (page + 1) + " of " + pages : "";
    document.querySelectorAll(".page-info").forEach((e) => { e.textContent = info; });
    document.querySelectorAll("button.prev").forEach((b) => { b.disabled = page === 0; });
    document.querySelectorAll("button.next").forEach((b) => { b.disabled = page >= pages - 1; });
    window.__reportState = { query: search.value, errorsOnly: errorsOnly.checked, matches: filtered.length, page };
  }

  let timer = null;
  search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(applyFilter, 120); });
  errorsOnly.addEventListener("change", applyFilter);
  pageSizeEl.value = String(pageSize);
  pageSizeEl.addEventListener("change", () => { pageSize = Number(pageSizeEl.value) || 50; page = 0; render(); });
  const go = (delta, top) => { page += delta; render(); if (top) rowsEl.scrollIntoView(); };
  document.querySelectorAll("button.prev").forEach((b) => b.addEventListener("click", () => go(-1, true)));
  document.querySelectorAll("button.next").forEach((b) => b.addEventListener("click", () => go(1, true)));
  render();
  window.__reportReady = { ms: performance.now(), rows: ROWS.length };
})();
