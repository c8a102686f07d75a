//! The package's TypeScript types: written once here, emitted into `hablar_client.d.ts`,
//! and bound to the Rust signatures through `typescript_type`, so a frontend gets
//! completion for options, states, events and errors.

use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &str = r#"
/** Returns a token, or a promise of one. Called on connect and once after a 4401. */
export type TokenProvider = () => string | Promise<string>;

/** Options of `new HablarClient(options)`. Only `url`, `chatId` and `token` are required. */
export interface HablarOptions {
  /** Server base URL: `https://chat.example.com` or `ws://127.0.0.1:8080`. */
  url: string;
  /** The chat to join: 1-128 characters of `[A-Za-z0-9_-]`. */
  chatId: string;
  /** The access JWT, or a function that returns (a promise of) a fresh one. */
  token: string | TokenProvider;
  /** Your user id, for servers that send no `ready` (default: the JWT's `user_id` claim):
   *  it tells your own typing and your own echoes (sender and `client_id`) from others'. */
  userId?: string;
  /** Ceiling of the first reconnect delay, ms (default 500). Delays are fully jittered. */
  backoffBaseMs?: number;
  /** Longest reconnect delay, ms (default 30000). */
  backoffCapMs?: number;
  /** A connection up this long resets the attempt count, ms (default 10000). */
  stableAfterMs?: number;
  /** How long to wait for `ready` before treating the server as base-layer, ms (default 2000). */
  readyTimeoutMs?: number;
  /** A connection attempt that takes longer is abandoned and retried, ms (default 15000). */
  connectTimeoutMs?: number;
  /** Idle time before a heartbeat `ping`, ms (default 25000; only to servers that sent `ready`). */
  pingIntervalMs?: number;
  /** No answer this long after a `ping` means the connection is dead, ms (default 10000). */
  pongTimeoutMs?: number;
  /** Most messages waiting to be delivered; one more rejects with `outbox_full` (default 100). */
  outboxLimit?: number;
}

/** The connection state: bind your "● Connected" indicator to this. */
export type ConnectionState =
  | { state: "connecting"; attempt: number }
  | { state: "open" }
  | { state: "reconnecting"; attempt: number; delayMs: number }
  | { state: "closed" }
  | { state: "failed"; code: number; reason: string };

/** A message's author, as stamped by the server. */
export interface Sender {
  id: string;
  username: string;
}

/** A message as the server sends it (wire format, snake_case), extra fields included. */
export interface Message {
  id: string;
  /** Per-chat position; absent from base-layer servers. */
  seq?: number;
  chat_id?: string;
  content: string;
  sender: Sender;
  /** RFC 3339, UTC. */
  created_at: string;
  /** The sender's idempotency key. */
  client_id?: string;
  [field: string]: unknown;
}

/** What `send()` takes: `content` plus any extra fields (`reply_to`, ...). */
export interface OutgoingMessage {
  content: string;
  /** Idempotency key; generated when absent. */
  client_id?: string;
  [field: string]: unknown;
}

/** A user in the typing or presence list. */
export interface ChatUser {
  userId: string;
  username: string;
}

/** Error codes: the SDK's own, then the server's `error` codes. */
export type HablarErrorCode =
  | "outbox_full"
  | "closed"
  | "failed"
  | "invalid_message"
  | "rate_limited"
  | "too_large"
  | "bad_json"
  | "unknown_type"
  | "unavailable"
  | (string & {});

/** Rejection of `send()` and payload of `onError`. */
export interface HablarError extends Error {
  name: "HablarError";
  code: HablarErrorCode;
  detail: string;
  /** The message the error is about. */
  clientId?: string;
}

/** Messages may have been missed: reload history over HTTP. */
export interface ReloadHistoryEvent {
  /** `not_recovered`: the server could not replay the gap; `no_resume`: the server cannot resume. */
  reason: "not_recovered" | "no_resume";
}
"#;

#[wasm_bindgen]
extern "C" {
    /// `HablarOptions`.
    #[wasm_bindgen(typescript_type = "HablarOptions")]
    pub type HablarOptions;
    /// `OutgoingMessage`.
    #[wasm_bindgen(typescript_type = "OutgoingMessage")]
    pub type OutgoingMessage;
    /// `Promise<Message>`.
    #[wasm_bindgen(typescript_type = "Promise<Message>")]
    pub type MessagePromise;
    /// `ConnectionState`.
    #[wasm_bindgen(typescript_type = "ConnectionState")]
    pub type ConnectionState;
    /// `ChatUser[]`.
    #[wasm_bindgen(typescript_type = "ChatUser[]")]
    pub type ChatUsers;
    /// A state listener.
    #[wasm_bindgen(typescript_type = "(state: ConnectionState) => void")]
    pub type StateListener;
    /// A message listener.
    #[wasm_bindgen(typescript_type = "(message: Message) => void")]
    pub type MessageListener;
    /// A typing or presence listener.
    #[wasm_bindgen(typescript_type = "(users: ChatUser[]) => void")]
    pub type UsersListener;
    /// An error listener.
    #[wasm_bindgen(typescript_type = "(error: HablarError) => void")]
    pub type ErrorListener;
    /// A history-reload listener.
    #[wasm_bindgen(typescript_type = "(event: ReloadHistoryEvent) => void")]
    pub type ReloadHistoryListener;
    /// What a subscription returns.
    #[wasm_bindgen(typescript_type = "() => void")]
    pub type Unsubscribe;
}
