// The playground: reads the form, POSTs /generate, lists the sentences. No library, nothing external.
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

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
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
  } catch (err) {
    $("run-info").textContent = "Could not read /info: " + err;
  }
}

async function generate(event) {
  event.preventDefault();
  const body = buildRequest();
  $("request-json").textContent = JSON.stringify(body, null, 2);
  $("generate").disabled = true;
  setStatus("generating…", false);
  try {
    const r = await fetch("/generate", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    const data = await r.json().catch(() => ({ detail: r.statusText }));
    if (!r.ok) {
      setStatus(`error ${r.status}: ${data.detail}`, true);
      return;
    }
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
    if (!$("run-info").textContent.startsWith("run ")) loadInfo();
  } catch (err) {
    setStatus("request failed: " + err, true);
  } finally {
    $("generate").disabled = false;
  }
}

$("generate-form").addEventListener("submit", generate);
$("reuse-seed").addEventListener("click", () => { if (lastSeed !== null) $("seed").value = lastSeed; });
loadInfo();
