// The search page: query -> /api/search -> result cards; a card plays its clip above.
"use strict";

const form = document.getElementById("search");
const input = document.getElementById("q");
const topK = document.getElementById("k");
const status = document.getElementById("status");
const results = document.getElementById("results");
const player = document.getElementById("player");
const clip = document.getElementById("clip");
const playing = document.getElementById("playing");

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function say(text, isError) {
  status.textContent = text;
  status.className = isError ? "error" : "";
}

// A moment (a hit of an index made with --window) has start and end in seconds.
function isMoment(hit) {
  return typeof hit.start === "number" && typeof hit.end === "number";
}

function range(hit) {
  return `${hit.start.toFixed(1)}\u2013${hit.end.toFixed(1)} s`;
}

// The clip starts at the moment's start once its length is known (seeking earlier is ignored
// by the browser); the rest of the video stays a scrub away.
let moment = null;

function seekToMoment() {
  if (moment && Math.abs(clip.currentTime - moment.start) > 0.05) clip.currentTime = moment.start;
}

clip.addEventListener("loadedmetadata", seekToMoment);

function play(hit) {
  player.hidden = false;
  moment = isMoment(hit) ? {start: hit.start, end: hit.end} : null;
  const at = moment ? `, ${range(hit)} of ${hit.duration.toFixed(1)} s`
                    : `, ${hit.duration.toFixed(1)} s`;
  playing.textContent = `#${hit.rank} ${hit.id} (${hit.name}${at})`;
  clip.dataset.start = moment ? hit.start : "";
  clip.dataset.end = moment ? hit.end : "";
  if (clip.dataset.rid === String(hit.rid) && clip.readyState >= 1) {
    seekToMoment();  // the same file: no new load, so no loadedmetadata
  } else {
    clip.src = hit.video;
    clip.dataset.rid = hit.rid;
  }
  clip.play().catch(() => {});
  player.scrollIntoView({behavior: "smooth", block: "nearest"});
}

clip.addEventListener("error", () => {
  const name = playing.textContent;
  playing.textContent = `${name}: this browser cannot play the file; `;
  const a = el("a", "", "download it");
  a.href = clip.src;
  a.download = "";
  playing.appendChild(a);
});

function card(hit) {
  const c = el("article", "card");
  c.tabIndex = 0;
  c.dataset.rid = hit.rid;
  if (hit.thumb) {
    const img = el("img", "thumb");
    img.src = hit.thumb;
    img.alt = hit.id;
    img.loading = "lazy";
    c.appendChild(img);
  } else {
    c.appendChild(el("div", "thumb none", "no thumbnail"));
  }
  const meta = el("div", "meta");
  meta.appendChild(el("span", "rank", `#${hit.rank}`));
  meta.appendChild(el("span", "score", hit.score.toFixed(3)));
  c.appendChild(meta);
  c.appendChild(el("div", "id", hit.id));
  if (isMoment(hit)) {
    c.appendChild(el("div", "moment", range(hit)));
    c.dataset.start = hit.start;
    c.dataset.end = hit.end;
  } else {
    c.appendChild(el("div", "duration", `${hit.duration.toFixed(1)} s`));
  }
  c.addEventListener("click", () => play(hit));
  c.addEventListener("keydown", (ev) => { if (ev.key === "Enter") play(hit); });
  return c;
}

async function search(q, k) {
  say("Searching\u2026");
  results.replaceChildren();
  let body;
  try {
    const r = await fetch(`/api/search?q=${encodeURIComponent(q)}&k=${encodeURIComponent(k)}`);
    body = await r.json();
    if (!r.ok) { say(body.error || `error ${r.status}`, true); return; }
  } catch (e) {
    say(`The server did not answer (${e}).`, true);
    return;
  }
  const what = body.score === "cosine" ? "cosine similarity" : "cross-encoder score";
  say(`${body.hits.length} best matches for \u201c${body.query}\u201d (${what})`);
  results.replaceChildren(...body.hits.map(card));
  history.replaceState(null, "", `?q=${encodeURIComponent(q)}&k=${encodeURIComponent(k)}`);
}

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  search(input.value, topK.value);
});

const params = new URLSearchParams(location.search);
if (params.get("q")) {
  input.value = params.get("q");
  if (params.get("k")) topK.value = params.get("k");
  search(input.value, topK.value);
}
