// fdpipe report: filters of a gallery page, in plain script (no library, no network).
// The filter state lives in the URL's hash, so that it survives paging and reloads.
"use strict";
(function () {
  const form = document.getElementById("filters");
  if (!form) return;
  const rows = Array.from(document.querySelectorAll("#gallery tbody tr"));
  const methods = Array.from(form.querySelectorAll("input[name=method]"));
  const text = (name) => form.elements[name].value.trim().toLowerCase();

  function state() {
    const s = new URLSearchParams();
    for (const name of ["class", "file", "status"]) {
      const value = form.elements[name].value.trim();
      if (value) s.set(name, value);
    }
    const hidden = methods.filter((m) => !m.checked).map((m) => m.value);
    if (hidden.length) s.set("hide", hidden.join(","));
    return s;
  }

  function restore() {
    const s = new URLSearchParams(location.hash.slice(1));
    for (const name of ["class", "file", "status"]) form.elements[name].value = s.get(name) || "";
    const hidden = (s.get("hide") || "").split(",");
    for (const m of methods) m.checked = !hidden.includes(m.value);
  }

  function apply() {
    const wantClass = text("class"), wantFile = text("file"), wantStatus = form.elements.status.value;
    let shown = 0;
    for (const row of rows) {
      const ok = (!wantClass || row.dataset.class.toLowerCase().includes(wantClass))
        && (!wantFile || row.dataset.path.toLowerCase().includes(wantFile))
        && (!wantStatus || row.dataset.status === wantStatus);
      row.classList.toggle("hidden", !ok);
      if (ok) shown += 1;
    }
    for (const m of methods) {
      for (const cell of document.querySelectorAll(`[data-method="${CSS.escape(m.value)}"]`)) {
        cell.classList.toggle("hidden", !m.checked);
      }
    }
    document.getElementById("shown").textContent = `${shown} of ${rows.length} rows on this page`;
    const hash = state().toString();
    history.replaceState(null, "", hash ? `#${hash}` : location.pathname);
    for (const link of document.querySelectorAll("a.keep-filters")) {
      link.href = link.getAttribute("href").split("#")[0] + (hash ? `#${hash}` : "");
    }
  }

  restore();
  form.addEventListener("input", apply);
  form.addEventListener("change", apply);
  form.addEventListener("submit", (event) => event.preventDefault());
  apply();
})();

// The index's search over every image of the run: images.js (one short entry per image) is
// loaded on first use only, so that the index of a large run opens at once.
(function () {
  const form = document.getElementById("find");
  if (!form) return;
  const results = document.getElementById("found");
  const LIMIT = 200;
  let loading = null;

  function load() {
    if (!loading) {
      loading = new Promise((resolve, reject) => {
        const script = document.createElement("script");
        script.src = "images.js";
        script.onload = resolve;
        script.onerror = () => reject(new Error("images.js could not be loaded"));
        document.head.appendChild(script);
      });
    }
    return loading;
  }

  function search() {
    const file = form.elements.file.value.trim().toLowerCase();
    const cls = form.elements.class.value.trim().toLowerCase();
    const status = form.elements.status.value;
    const hits = [];
    let total = 0;
    for (const [path, name, state, page] of window.fdpipeImages) {
      if ((file && !path.toLowerCase().includes(file)) || (cls && !name.toLowerCase().includes(cls))
          || (status && state !== status)) continue;
      total += 1;
      if (hits.length < LIMIT) hits.push([path, name, state, page]);
    }
    results.replaceChildren();
    const summary = document.createElement("p");
    summary.id = "found-count";
    summary.textContent = `${total} image(s)` + (total > LIMIT ? `, the first ${LIMIT} shown` : "");
    results.appendChild(summary);
    const list = document.createElement("ul");
    for (const [path, name, state, page] of hits) {
      const item = document.createElement("li");
      const link = document.createElement("a");
      const hash = new URLSearchParams({ file: path });
      link.href = `page-${String(page).padStart(5, "0")}.html#${hash}`;
      link.textContent = path;
      item.append(link, ` ${name}${state === "failed" ? " (failed)" : ""}, page ${page}`);
      list.appendChild(item);
    }
    results.appendChild(list);
  }

  function run() {
    const empty = ["file", "class", "status"].every((n) => !form.elements[n].value.trim());
    if (empty) { results.replaceChildren(); return; }
    load().then(search, (error) => { results.textContent = error.message; });
  }

  // text fields on "input" only: their "change" on leaving the field would redraw the list
  // under a click on one of its links
  form.elements.file.addEventListener("input", run);
  form.elements.class.addEventListener("input", run);
  form.elements.status.addEventListener("change", run);
  form.addEventListener("submit", (event) => { event.preventDefault(); run(); });
})();
