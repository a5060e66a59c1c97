// The support desk page: sign in with a vendor's token, diagnose a number by any
// spelling, read the verdict and the timeline, and resolve it from the same place.
// Plain JavaScript, no build, as the owner page.
"use strict";

const TOKEN_KEY = "bridge.support-token"; // sessionStorage: gone when the tab closes
const $ = (id) => document.getElementById(id);

const ACTION_LABELS = {
  release: "Release the claim",
  transfer: "Transfer to the person asking",
  approve: "Approve the number",
  reenable: "Open a new window",
};
const CAUSE_NAMES = {
  1: "Number entered wrong",
  2: "Claimed by someone else",
  3: "Not approved yet",
  4: "Device problem",
};
const VERDICT_NAMES = {
  never_tried: "Never tried",
  window_closed: "Window closed before the first attempt",
  not_claimed: "Approved, not claimed yet",
  revoked: "Key revoked",
  fine: "Fine",
};

let current = null; // the request behind the diagnosis shown

class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `The request failed (HTTP ${status}).`);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, { message: "The service cannot be reached; check your connection." });
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401) signOut(error.message);
    throw error;
  }
  return data;
}

function diagnosePath(vendor, model, number) {
  return `/v1/diagnose/${[vendor, model, number].map(encodeURIComponent).join("/")}`;
}

// -- signing in ----------------------------------------------------------------

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  let me;
  try {
    me = await api("GET", "/v1/me");
  } catch (error) {
    showSignInError(error.message);
    return;
  }
  if (me.role === "owner") {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignInError("This is an owner's token; the support desk is for a vendor's staff.");
    return;
  }
  $("who-name").textContent =
    me.role === "vendor" ? `Support for ${me.subject}` : "Support (administrator)";
  $("who").hidden = false;
  $("sign-in").hidden = true;
  $("search").hidden = false;
  $("token").value = "";
  if (me.role === "vendor") $("vendor").value = me.subject;
  $(me.role === "vendor" ? "model" : "vendor").focus();
}

function signOut(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  // The next person at this desk must see nothing of this case: what was typed (the
  // number, the account asking, the reason) and what was shown go with the token.
  current = null;
  $("search-form").reset();
  $("reason").value = "";
  for (const id of ["error", "done"]) {
    $(id).textContent = "";
    $(id).hidden = true;
  }
  for (const list of [$("evidence"), $("neighbours"), $("actions"), $("timeline").tBodies[0]]) {
    list.replaceChildren();
  }
  $("who").hidden = true;
  $("search").hidden = true;
  $("result").hidden = true;
  $("sign-in").hidden = false;
  if (reason) showSignInError(reason);
  else $("sign-in-error").hidden = true;
}

function showSignInError(message) {
  $("sign-in-error").textContent = message;
  $("sign-in-error").hidden = false;
}

// -- diagnosing ------------------------------------------------------------------

async function diagnose(event) {
  if (event) event.preventDefault();
  const request = {
    vendor: $("vendor").value.trim(),
    model: $("model").value.trim(),
    number: $("number").value,
    asking: $("asking").value.trim(),
  };
  const button = $("diagnose-button");
  button.disabled = true;
  $("error").hidden = true;
  $("done").hidden = true;
  try {
    const query = request.asking ? `?asking=${encodeURIComponent(request.asking)}` : "";
    const asked = sessionStorage.getItem(TOKEN_KEY);
    const found = await api("GET", diagnosePath(request.vendor, request.model, request.number) + query);
    if (sessionStorage.getItem(TOKEN_KEY) !== asked) return; // signed out meanwhile
    current = request;
    render(found);
  } catch (error) {
    $("result").hidden = true;
    $("error").textContent = error.message;
    $("error").hidden = false;
  } finally {
    button.disabled = false;
  }
}

function when(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace(/(\+00:00|Z)$/, "") : "";
}

function render(d) {
  $("verdict-title").textContent = d.cause
    ? `Cause ${d.cause}: ${CAUSE_NAMES[d.cause]}`
    : VERDICT_NAMES[d.verdict] || d.verdict;
  const badge = $("verdict-badge");
  badge.textContent = d.verdict;
  badge.className = `state ${d.cause ? "verdict-cause" : d.verdict === "fine" ? "verdict-ok" : "verdict-info"}`;
  $("summary").textContent = d.summary;
  const dev = d.device;
  const number = d.identifier || JSON.stringify(d.typed);
  $("state-line").textContent = dev
    ? `${d.vendor}/${d.model} ${number}: ${dev.state}` +
      (dev.owner ? ` by ${dev.owner} since ${when(dev.claimed_at)}` : "") +
      (dev.window_ends_at ? `, window until ${when(dev.window_ends_at)}` : "")
    : `${d.vendor}/${d.model} ${number}: not on the approval list`;
  fill($("evidence"), d.evidence.map((sentence) => text("li", sentence)));
  $("next-step").textContent = d.next_step;
  $("contact").hidden = !d.support_contact;
  $("contact").textContent = d.support_contact ? `Support contact shown to owners: ${d.support_contact}` : "";

  $("neighbours-block").hidden = d.neighbours.length === 0;
  fill(
    $("neighbours"),
    d.neighbours.map((n) => {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = "#number";
      link.textContent = n.identifier;
      link.addEventListener("click", (event) => {
        event.preventDefault();
        $("number").value = n.identifier;
        diagnose();
      });
      item.append(link, ` — ${n.how}, ${n.owner ? `claimed by ${n.owner}` : "unclaimed"}`);
      return item;
    }),
  );

  const buttons = d.actions
    .filter((action) => action !== "transfer" || current.asking)
    .map((action) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary";
      button.dataset.action = action;
      button.textContent = action === "transfer" ? `Transfer to ${current.asking}` : ACTION_LABELS[action];
      button.addEventListener("click", () => act(action));
      return button;
    });
  fill($("actions"), buttons);
  $("act").hidden = buttons.length === 0;

  fill(
    $("timeline").tBodies[0],
    d.timeline.map((e) => {
      const row = document.createElement("tr");
      const who = e.action === "activate" ? e.client_id : e.owner || e.actor;
      const outcome = e.count > 1 ? `${e.code} ×${e.count}` : e.code;
      const detail = e.detail ? ` (${e.detail})` : "";
      row.append(
        text("td", when(e.at)),
        text("td", e.action),
        text("td", outcome + detail),
        text("td", who || ""),
        text("td", e.action === "activate" ? e.presented || "" : ""),
      );
      return row;
    }),
  );
  $("result").hidden = false;
}

function text(tag, value) {
  const el = document.createElement(tag);
  el.textContent = value;
  return el;
}

function fill(parent, children) {
  parent.replaceChildren(...children);
}

async function act(action) {
  const reason = $("reason").value.trim();
  if ((action === "release" || action === "transfer") && !reason) {
    $("error").textContent = `A ${action} needs a reason: it is recorded and the previous owner sees it.`;
    $("error").hidden = false;
    $("reason").focus();
    return;
  }
  const body = { action };
  if (reason) body.reason = reason;
  if (action === "transfer") body.to = current.asking;
  $("error").hidden = true;
  const asked = sessionStorage.getItem(TOKEN_KEY);
  try {
    const answer = await api(
      "POST",
      `${diagnosePath(current.vendor, current.model, current.number)}/resolve`,
      body,
    );
    if (sessionStorage.getItem(TOKEN_KEY) !== asked) return; // signed out meanwhile
    $("reason").value = "";
    render(answer.diagnosis);
    $("done").textContent = answer.message;
    $("done").hidden = false;
  } catch (error) {
    $("error").textContent = error.message;
    $("error").hidden = false;
  }
}

// -- wiring ---------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("token").value.trim());
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("search-form").addEventListener("submit", diagnose);
  // Enter in the reason field submits this one-field form: the buttons act, not Enter.
  $("act").addEventListener("submit", (event) => event.preventDefault());
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
});
