// The playground: one tab per endpoint (/generate, /reconstruct, /interpolate, /score); each reads its
// form, POSTs it and shows the answer, or the server's message naming the wrong field. No library,
// nothing external.
"use strict";

const $ = (id) => document.getElementById(id);
let lastSeed = null;

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function intField(id) {
  const raw = $(id).value.trim();
  if (raw === "") return null;
  const value = Number(raw);
  return Number.isInteger(value) ? value : raw;  // a non-integer goes through: the server names the field
}

function numberField(id) {
  const raw = $(id).value.trim();
  const value = Number(raw);
  return raw === "" || Number.isNaN(value) ? raw : value;
}

function buildRequest() {
  const body = {
    n: intField("n"),
    max_length: intField("max_length"),
    temperature: numberField("temperature"),
    top_k: intField("top_k"),
    top_p: numberField("top_p"),
    greedy: $("greedy").checked,
  };
  const seed = intField("seed");
  if (seed !== null) body.seed = seed;
  const steps = intField("prior_steps");
  if (steps !== null) body.prior_steps = steps;
  for (const k of Object.keys(body)) if (body[k] === null) delete body[k];
  return body;
}

function setStatus(text, isError, id = "status") {
  $(id).textContent = text;
  $(id).className = isError ? "error" : "";
}

function lines(id) {
  return $(id).value.split("\n").map((s) => s.trim()).filter((s) => s !== "");
}

function withOptional(body, fields) {
  for (const [key, id] of Object.entries(fields)) {
    const value = intField(id);
    if (value !== null) body[key] = value;
  }
  return body;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

// POST `body` to `path`; the parsed answer, or null after showing the error in `statusId`.
async function post(path, body, statusId, button) {
  button.disabled = true;
  setStatus("working…", false, statusId);
  try {
    const r = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
    const data = await r.json().catch(() => ({ detail: r.statusText }));
    if (!r.ok) {
      setStatus(`error ${r.status}: ${data.detail}`, true, statusId);
      return null;
    }
    if (!$("run-info").textContent.startsWith("run ")) loadInfo();  // the key was missing at load time
    return data;
  } catch (err) {
    setStatus("request failed: " + err, true, statusId);
    return null;
  } finally {
    button.disabled = false;
  }
}

async function loadInfo() {
  try {
    const r = await fetch("/info", { headers: headers() });
    if (r.status === 401) {
      $("run-info").textContent = "This server needs an API key: enter it below.";
      return;
    }
    const info = await r.json();
    $("run-info").textContent =
      `run ${info.run} (step ${info.step}) · corpus ${info.corpus} · vocabulary ${info.vocab_size} · ` +
      `latent ${info.latent_dim} · ${info.prior} prior, ${info.prior_steps} steps · textebm ${info.version}`;
    $("n").max = info.limits.max_n;
    $("max_length").max = info.limits.max_length;
    $("prior_steps").max = info.limits.max_prior_steps;
    $("int-points").max = Math.max(2, info.limits.max_n);
    $("int-max-length").max = info.limits.max_length;
    for (const id of ["rec-chains", "int-chains", "score-chains"]) $(id).max = info.limits.max_chains;
  } catch (err) {
    $("run-info").textContent = "Could not read /info: " + err;
  }
}

async function generate(event) {
  event.preventDefault();
  const body = buildRequest();
  $("request-json").textContent = JSON.stringify(body, null, 2);
  const data = await post("/generate", body, "status", $("generate"));
  if (data === null) return;
  const list = $("sentences");
  list.replaceChildren();
  for (const s of data.sentences) {
    const li = document.createElement("li");
    li.textContent = s === "" ? "(empty sentence)" : s;
    list.appendChild(li);
  }
  lastSeed = data.seed;
  $("reuse-seed").disabled = false;
  setStatus(`${data.sentences.length} sentences · seed ${data.seed} · ${data.took_ms} ms` +
            (data.batch_requests > 1 ? ` · batched with ${data.batch_requests - 1} other requests` : ""), false);
}

async function reconstruct(event) {
  event.preventDefault();
  const body = withOptional({ sentences: lines("rec-sentences") }, { chains: "rec-chains", seed: "rec-seed" });
  const data = await post("/reconstruct", body, "rec-status", $("reconstruct"));
  if (data === null) return;
  const rows = $("rec-table").tBodies[0];
  rows.replaceChildren();
  for (const s of data.sentences) {
    const tr = document.createElement("tr");
    cell(tr, s.input);
    cell(tr, s.reconstruction === "" ? "(empty sentence)" : s.reconstruction).className = s.exact ? "exact" : "";
    cell(tr, s.bleu.toFixed(1));
    rows.appendChild(tr);
  }
  const exact = data.sentences.filter((s) => s.exact).length;
  $("rec-summary").textContent = `${data.comparison}. Exact: ${exact} of ${data.sentences.length}.`;
  setStatus(`${data.sentences.length} sentences · seed ${data.seed} · codes: ${data.inference} · ` +
            `${data.took_ms} ms`, false, "rec-status");
}

async function interpolate(event) {
  event.preventDefault();
  const body = withOptional({ from: $("int-from").value, to: $("int-to").value },
                            { points: "int-points", chains: "int-chains", max_length: "int-max-length",
                              seed: "int-seed" });
  const data = await post("/interpolate", body, "int-status", $("interpolate"));
  if (data === null) return;
  const list = $("int-path");
  list.replaceChildren();
  for (const p of data.points) {
    const li = document.createElement("li");
    const t = document.createElement("span");
    t.className = "t";
    t.textContent = `t=${p.t.toFixed(2)}`;
    li.append(t, " ", p.sentence === "" ? "(empty sentence)" : p.sentence);
    list.appendChild(li);
  }
  setStatus(`${data.points.length} points · seed ${data.seed} · ${data.took_ms} ms`, false, "int-status");
}

async function score(event) {
  event.preventDefault();
  const body = withOptional({ sentences: lines("score-sentences") }, { num_chains: "score-chains", seed: "score-seed" });
  const data = await post("/score", body, "score-status", $("score"));
  if (data === null) return;
  const rows = $("score-table").tBodies[0];
  rows.replaceChildren();
  for (const s of data.scores) {
    const tr = document.createElement("tr");
    cell(tr, s.per_token.toFixed(4));
    cell(tr, s.total.toFixed(3));
    cell(tr, String(s.tokens));
    cell(tr, s.sentence);
    rows.appendChild(tr);
  }
  setStatus(`${data.scores.length} sentences · seed ${data.seed} · higher = more anomalous · ${data.took_ms} ms`,
            false, "score-status");
}

function showTab(name) {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const selected = tab.id === "tab-" + name;
    tab.setAttribute("aria-selected", String(selected));
    $(tab.getAttribute("aria-controls")).hidden = !selected;
  }
}

for (const tab of document.querySelectorAll("[role=tab]")) {
  tab.addEventListener("click", () => showTab(tab.id.slice("tab-".length)));
}
$("generate-form").addEventListener("submit", generate);
$("reconstruct-form").addEventListener("submit", reconstruct);
$("interpolate-form").addEventListener("submit", interpolate);
$("score-form").addEventListener("submit", score);
$("reuse-seed").addEventListener("click", () => { if (lastSeed !== null) $("seed").value = lastSeed; });
loadInfo();
