// Hablar demo chat: the reference for using the SDK from a plain page.
//
// It joins one chat as a demo user: gets a token from the dev endpoint, loads recent
// history over HTTP, then lets the SDK keep the live connection (reconnects, resume,
// typing leases, the outbox) and only renders what the SDK reports.
//
// A bundler app imports the same package: `import init, { HablarClient } from "hablar-client"`.
import init, { HablarClient } from "/pkg/hablar_client.js";

// The chat server: this page's origin (`hablar-server --dev` serves it), or `?server=`
// for a backend elsewhere (e.g. a Django Channels deployment).
const params = new URLSearchParams(location.search);
const server = params.get("server") || location.origin;
// `?ttl=5` asks for 5-second tokens, to watch the SDK renew them (close code 4401).
const ttl = Number(params.get("ttl")) || undefined;

const $ = (id) => document.getElementById(id);
const ui = {
  join: $("join"), connection: $("connection"), notice: $("notice"), messages: $("messages"),
  typing: $("typing"), composer: $("composer"), input: $("input"),
};

let client = null; // the HablarClient of the chat we are in
let session = null; // { user, chat, token: Promise<string>, username }: guards stale async work
// The server's messages by `id`: one entry per message, however it came (live, replayed,
// history). Not by `client_id`: the sender picks that, and another member who reuses ours
// (they see it on our messages) must not replace our message on screen.
let messages = new Map();
// Our sends the server has not stored yet, by `client_id`: { content, sender, failed? }.
// Kept apart, so that no field of a server message (any member can add fields) can make
// it look unsent or replace one of these.
let outgoing = new Map();
let countdown = null; // interval that updates "Reconnecting in N s…"

/** Asks the dev endpoint for an access token (a real app asks its own auth backend). */
async function fetchToken(s) {
  const res = await fetch(`${server}/api/dev/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user_id: s.user, ttl_secs: ttl }),
  });
  if (!res.ok) throw new Error(`token endpoint answered HTTP ${res.status}`);
  const body = await res.json();
  s.username = body.username;
  return body.token;
}

/** Leaves the current chat (if any) and joins `chat` as `user`. */
function join(user, chat) {
  client?.close(); // sends typing_stop and closes the socket
  client?.free(); // releases the wasm side
  const s = (session = { user, chat, token: null, username: user });
  messages = new Map();
  outgoing = new Map();
  render();
  showTyping([]);
  showNotice(null);
  history.replaceState(null, "", `?${new URLSearchParams({ ...Object.fromEntries(params), user, chat })}`);

  client = new HablarClient({
    url: server,
    chatId: chat,
    // A function, not a string: the SDK calls it again when the server says the token
    // expired (close code 4401). The promise is kept for the history request.
    token: () => (s.token = fetchToken(s)),
  });
  client.onState(showState);
  client.onMessage((m) => addMessages([m]));
  client.onTyping(showTyping);
  client.onError((e) => console.warn(`chat error ${e.code}: ${e.detail}`));
  // The server could not replay what we missed while offline: fetch it over HTTP.
  client.onReloadHistory(() => loadHistory(s));
  client.connect();
  loadHistory(s);
  enableComposer(true);
  ui.input.placeholder = `Message #${chat}`;
  ui.input.focus();
}

/** Loads the newest 50 messages over HTTP and merges them with what is shown. */
async function loadHistory(s) {
  try {
    const token = await (s.token ??= fetchToken(s));
    const res = await fetch(`${server}/api/chats/${s.chat}/messages?limit=50`, {
      headers: { Authorization: `Bearer ${token}` },
    });
    if (session !== s) return; // the user switched rooms meanwhile
    if (res.status === 403) return; // not a member: the connection state says so
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    addMessages((await res.json()).messages);
  } catch {
    // E.g. a base-layer backend without the history API: live messages still work.
    if (session === s) showNotice("No history from this server; new messages appear below.", "info");
  }
}

/** Adds (or replaces, by `id`) the server's messages and redraws the list. */
function addMessages(list) {
  for (const m of list) messages.set(m.id, m);
  render();
}

/** Sends the composer's text. It shows at once as "sending…" until the SDK resolves the
 *  send with the server's copy (our own echo: our sender id and our `client_id`), which
 *  takes its place; offline it waits in the SDK's outbox. */
function send(content) {
  const s = session;
  const client_id = crypto.randomUUID?.() ?? `${Date.now()}-${Math.random()}`;
  outgoing.set(client_id, { content, sender: { id: s.user, username: s.username } });
  render();
  client.send({ content, client_id }).then(
    (stored) => {
      if (session !== s) return;
      outgoing.delete(client_id);
      addMessages([stored]); // usually shown already, through onMessage
    },
    (err) => {
      if (session !== s) return;
      const m = outgoing.get(client_id);
      if (m) m.failed = err.detail || err.message;
      render();
    },
  );
}

/** Stored messages in server time order (`seq` breaks ties). */
function byTime(a, b) {
  return Date.parse(a.created_at) - Date.parse(b.created_at) || (a.seq ?? 0) - (b.seq ?? 0);
}

/** Redraws the message list: stored messages, then our unsent ones in send order. A
 *  rebuild is fine for a demo's 50-odd messages. */
function render() {
  const stored = [...messages.values()].sort(byTime).map((m) => messageItem(m, null));
  const unsent = [...outgoing.values()].map((m) => messageItem(m, m.failed ? "failed" : "pending"));
  ui.messages.replaceChildren(...stored, ...unsent);
  const main = ui.messages.parentElement;
  main.scrollTop = main.scrollHeight;
}

/** One message's `<li>`. `unsent` is "pending", "failed" or null (stored): it comes from
 *  where the message is kept, never from the message's own fields. */
function messageItem(m, unsent) {
  const li = document.createElement("li");
  li.dataset.testid = "message";
  li.dataset.sender = m.sender.id;
  li.className = unsent ?? "";
  if (m.sender.id === session?.user) li.classList.add("mine");
  const who = document.createElement("span");
  who.className = "sender";
  who.textContent = m.sender.username; // textContent, never innerHTML: content is untrusted
  const when = document.createElement("time");
  if (unsent) {
    when.textContent = unsent === "failed" ? `not sent: ${m.failed}` : "sending…";
  } else if (m.created_at) {
    when.dateTime = m.created_at;
    when.textContent = new Date(m.created_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  const text = document.createElement("p");
  text.dataset.testid = "message-content";
  text.textContent = m.content;
  li.append(who, when, text);
  return li;
}

/** "Alice is typing…", "Alice and Bob are typing…", "Alice, Bob and Carol are typing…". */
function showTyping(users) {
  const names = users.map((u) => u.username);
  const last = names.pop();
  ui.typing.textContent = !last ? "" : names.length === 0 ? `${last} is typing…` : `${names.join(", ")} and ${last} are typing…`;
}

/** The connection indicator, bound to the SDK's state. */
function showState(state) {
  clearInterval(countdown);
  ui.connection.dataset.state = state.state;
  const say = (text) => (ui.connection.textContent = text);
  switch (state.state) {
    case "open":
      say("● Connected");
      break;
    case "connecting":
      say(state.attempt > 0 ? "● Reconnecting…" : "● Connecting…");
      break;
    case "reconnecting": {
      const at = Date.now() + state.delayMs;
      const tick = () => say(`● Reconnecting in ${Math.max(0, Math.ceil((at - Date.now()) / 1000))} s…`);
      tick();
      countdown = setInterval(tick, 250);
      break;
    }
    case "failed":
      say(`● Failed: ${state.reason}`);
      enableComposer(false);
      if (state.code === 4403) {
        showNotice(`${session.username} is not a member of #${session.chat}. Pick another user or room.`, "error");
      }
      break;
    default: // "closed"
      say("Not connected");
  }
}

/** While connecting or offline the composer stays usable: the SDK queues the sends. */
function enableComposer(on) {
  for (const el of ui.composer.elements) el.disabled = !on;
}

/** The banner above the messages (`null` hides it). */
function showNotice(text, kind) {
  ui.notice.hidden = !text;
  ui.notice.textContent = text ?? "";
  ui.notice.dataset.kind = kind ?? "";
}

ui.join.addEventListener("submit", (e) => {
  e.preventDefault();
  join(ui.join.elements.user.value, ui.join.elements.chat.value);
});
ui.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  const content = ui.input.value.trim();
  if (!content || !client) return;
  send(content); // the SDK also sends typing_stop
  ui.input.value = "";
});
// Every keystroke: the SDK turns these into typing_start/typing_stop leases.
ui.input.addEventListener("input", () => (ui.input.value ? client?.typing() : client?.stopTyping()));
ui.input.addEventListener("blur", () => client?.stopTyping());
// Leaving the page: say goodbye properly (typing_stop, clean close).
addEventListener("pagehide", () => client?.close());

// Load the wasm module once, then join the room named in the URL, if any.
await init();
for (const name of ["user", "chat"]) if (params.has(name)) ui.join.elements[name].value = params.get(name);
if (params.has("user") && params.has("chat")) join(params.get("user"), params.get("chat"));
