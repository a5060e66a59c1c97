// The owner page's support block (loaded beside app.js): under each claimed device
// that has not activated, what the bridge has seen of it; beside a refused claim, the
// model's support contact; and the account's history (a release by support shows its
// reason). It only reads: app.js keeps the page's state.
"use strict";

(() => {
  const TOKEN_KEY = "bridge.token"; // the owner page's own token
  const seen = new Map(); // "vendor/model/number" -> {text, at}
  const FRESH_MS = 30_000;

  async function get(path) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return null;
    try {
      const response = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
      const answer = response.ok ? await response.json() : null;
      // Signed out (or another account signed in) meanwhile: the answer is not theirs.
      return sessionStorage.getItem(TOKEN_KEY) === token ? answer : null;
    } catch {
      return null;
    }
  }

  function path(...parts) {
    return parts.map(encodeURIComponent).join("/");
  }

  function sentence(d) {
    const attempt = d.attempts_elsewhere[0];
    if (d.verdict === "wrong_identifier" && attempt) {
      return `Your device tried with ${attempt.presented}, which differs from the number you added (${d.identifier}).`;
    }
    if (d.verdict === "never_tried") {
      return "No attempt yet: the bridge has not heard from this device since you added it; check that it is on and online.";
    }
    if (d.verdict === "window_closed") {
      return "The activation window closed before the device's first attempt: re-enable it to open a new one.";
    }
    if (d.verdict === "device_refused") {
      const last = [...d.timeline].reverse().find((e) => e.action === "activate");
      return `Your device tried and was refused${last ? ` (${last.code})` : ""}: contact the vendor.`;
    }
    return d.summary;
  }

  async function describe(item) {
    const name = item.querySelector(".device-name").textContent.split(" / ");
    const number = item.querySelector(".device-number").textContent;
    const key = `${name[0]}/${name[1]}/${number}`;
    let known = seen.get(key);
    if (!known || Date.now() - known.at > FRESH_MS) {
      const d = await get(`/v1/diagnose/${path(name[0], name[1], number)}`);
      if (!d) return;
      const contact = d.support_contact ? ` Support: ${d.support_contact}` : "";
      known = { text: sentence(d) + contact, at: Date.now() };
      seen.set(key, known);
    }
    let block = item.querySelector(".device-seen");
    if (!block) {
      block = document.createElement("div");
      block.className = "device-seen";
      item.querySelector(".device-window").after(block);
    }
    block.textContent = known.text;
  }

  function devicesShown() {
    for (const item of document.querySelectorAll("#device-list .device")) {
      if (item.querySelector(".state").textContent === "claimed") describe(item);
    }
    history();
  }

  async function contactBeside(result) {
    document.getElementById("support-contact")?.remove();
    if (!result.classList.contains("error") || result.hidden) return;
    const vendor = document.getElementById("vendor").value.trim();
    const model = document.getElementById("model").value.trim();
    if (!vendor || !model) return;
    const answer = await get(`/v1/models/${path(vendor, model)}/support-contact`);
    if (!answer || !answer.support_contact) return;
    document.getElementById("support-contact")?.remove();
    const line = document.createElement("p");
    line.id = "support-contact";
    line.className = "support-contact";
    line.textContent = `Support for ${vendor}/${model}: ${answer.support_contact}`;
    result.after(line);
  }

  async function history() {
    const answer = await get("/v1/history");
    if (!answer) return;
    let section = document.getElementById("history");
    if (!section) {
      section = document.createElement("section");
      section.id = "history";
      const title = document.createElement("h2");
      title.textContent = "History";
      const list = document.createElement("ul");
      list.id = "history-list";
      section.append(title, list);
      document.getElementById("devices").after(section);
    }
    const lines = answer.entries.slice(0, 10).map((e) => {
      const item = document.createElement("li");
      const at = e.at.replace("T", " ").slice(0, 16);
      const reason = e.reason ? `: ${e.reason}` : "";
      item.textContent = `${at} ${e.action} ${e.vendor}/${e.model} ${e.identifier} by ${e.by}${reason}`;
      return item;
    });
    document.getElementById("history-list").replaceChildren(...lines);
    section.hidden = lines.length === 0 || document.getElementById("devices").hidden;
  }

  document.addEventListener("DOMContentLoaded", () => {
    const list = document.getElementById("device-list");
    new MutationObserver(devicesShown).observe(list, { childList: true });
    const result = document.getElementById("result");
    let pending = null; // one look-up per shown answer, not one per DOM change
    const later = () => {
      clearTimeout(pending);
      pending = setTimeout(() => contactBeside(result), 50);
    };
    new MutationObserver(later).observe(result, {
      attributes: true,
      childList: true,
      characterData: true,
      subtree: true,
    });
    // Signed out: the history of the account and what was seen of its devices go with
    // its devices, so that the next person at this browser sees none of it.
    const devices = document.getElementById("devices");
    new MutationObserver(() => {
      if (!devices.hidden) return;
      seen.clear();
      document.getElementById("history")?.remove();
    }).observe(devices, { attributes: true, attributeFilter: ["hidden"] });
  });
})();
