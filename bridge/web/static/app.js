// The reference owner page: sign in with a token, add a device by the number on
// its label, and manage the devices in the account. Plain JavaScript, no build.
"use strict";

const TOKEN_KEY = "bridge.token"; // sessionStorage: gone when the tab closes
const $ = (id) => document.getElementById(id);

let devices = [];
let fetchedAt = 0;

class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `The request failed (HTTP ${status}).`);
    this.status = status;
    this.code = body.code || "error";
    this.suggestion = body.suggestion || null;
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
    throw new ApiError(0, {
      code: "unavailable",
      message: "The service cannot be reached; check your connection and try again.",
    });
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401) signOut(error.message);
    throw error;
  }
  return data;
}

function devicePath(device, action) {
  const parts = [device.vendor, device.model, device.identifier].map(encodeURIComponent);
  return `/v1/devices/${parts.join("/")}/${action}`;
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
  if (me.role !== "owner") {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignInError(`This is a ${me.role}'s token; this page is for device owners.`);
    return;
  }
  $("who-name").textContent = `Signed in as ${me.subject}`;
  $("who").hidden = false;
  $("sign-in").hidden = true;
  $("add").hidden = false;
  $("devices").hidden = false;
  $("token").value = "";
  $("vendor").focus();
  await loadDevices();
}

function signOut(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  // The next person at this browser must not see this account's devices while theirs load.
  devices = [];
  $("device-list").replaceChildren();
  $("result").replaceChildren();
  $("who").hidden = true;
  $("add").hidden = true;
  $("devices").hidden = true;
  $("sign-in").hidden = false;
  $("result").hidden = true;
  if (reason) showSignInError(reason);
  else $("sign-in-error").hidden = true;
}

function showSignInError(message) {
  const el = $("sign-in-error");
  el.textContent = message;
  el.hidden = false;
}

// -- adding a device -----------------------------------------------------------

function showResult(ok, message, suggestion) {
  const el = $("result");
  el.replaceChildren();
  el.className = `message ${ok ? "ok" : "error"}`;
  const ask = suggestion ? `did you mean ${suggestion}?` : null;
  const at = ask ? message.indexOf(ask) : -1;
  if (at >= 0) {
    // The sentence stays whole; its question becomes the link that fills the number in.
    const link = document.createElement("a");
    link.href = "#number";
    link.id = "suggestion";
    link.textContent = ask;
    link.addEventListener("click", (event) => {
      event.preventDefault();
      $("number").value = suggestion;
      $("number").focus();
    });
    el.append(message.slice(0, at), link, message.slice(at + ask.length));
  } else {
    el.textContent = message;
  }
  el.hidden = false;
}

async function addDevice(event) {
  event.preventDefault();
  const button = $("add-button");
  button.disabled = true;
  try {
    const answer = await api("POST", "/v1/claims", {
      vendor: $("vendor").value.trim(),
      model: $("model").value.trim(),
      identifier: $("number").value,
    });
    showResult(true, answer.message);
    await loadDevices();
  } catch (error) {
    showResult(false, error.message, error.suggestion);
  } finally {
    button.disabled = false;
  }
}

// -- my devices ----------------------------------------------------------------

async function loadDevices() {
  const asked = sessionStorage.getItem(TOKEN_KEY);
  try {
    const answer = await api("GET", "/v1/devices");
    if (sessionStorage.getItem(TOKEN_KEY) !== asked) return; // another account's now
    devices = answer.devices;
    fetchedAt = Date.now();
    renderDevices();
  } catch (error) {
    if (error.status !== 401) showResult(false, error.message);
  }
}

function duration(seconds) {
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  if (d > 0) return `${d} d ${h} h`;
  if (h > 0) return `${h} h ${m} min`;
  if (m > 0) return `${m} min`;
  return `${seconds} s`;
}

function windowText(device) {
  if (device.state === "activated") {
    const when = device.activated_at ? new Date(device.activated_at).toLocaleString() : "";
    return `Activated ${when}`.trim();
  }
  if (device.state === "revoked") return "Key revoked: re-enable it to let it activate again.";
  if (device.window_seconds_left === null) return "No activation window open.";
  const elapsed = Math.floor((Date.now() - fetchedAt) / 1000);
  const left = device.window_seconds_left - elapsed;
  if (left <= 0) return "Activation window closed: re-enable it to open a new one.";
  return `Activation window: ${duration(left)} left`;
}

function canReenable(device) {
  if (device.state === "activated" || device.state === "revoked") return true;
  const elapsed = Math.floor((Date.now() - fetchedAt) / 1000);
  return device.window_seconds_left !== null && device.window_seconds_left - elapsed <= 0;
}

function renderDevices() {
  const list = $("device-list");
  const template = $("device-template");
  list.replaceChildren();
  $("devices-empty").hidden = devices.length > 0;
  for (const device of devices) {
    const item = template.content.firstElementChild.cloneNode(true);
    item.querySelector(".device-name").textContent = `${device.vendor} / ${device.model}`;
    const state = item.querySelector(".state");
    state.textContent = device.state;
    state.classList.add(device.state);
    item.querySelector(".device-number").textContent = device.identifier;
    item.querySelector(".device-window").textContent = windowText(device);
    const release = item.querySelector(".release");
    release.addEventListener("click", () => act(device, "release"));
    const reenable = item.querySelector(".reenable");
    reenable.hidden = !canReenable(device);
    reenable.addEventListener("click", () => act(device, "reenable"));
    list.append(item);
  }
}

async function act(device, action) {
  if (
    action === "release" &&
    !window.confirm(`Release ${device.identifier}? Its key stops working and anyone may claim it.`)
  ) {
    return;
  }
  try {
    const answer = await api("POST", devicePath(device, action));
    showResult(true, answer.message);
  } catch (error) {
    showResult(false, error.message);
  }
  await loadDevices();
}

// -- wiring ---------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("token").value.trim());
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("add-form").addEventListener("submit", addDevice);
  setInterval(() => devices.length && renderDevices(), 30_000);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
});
