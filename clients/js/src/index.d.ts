// Types of the Reactive RTC client (src/index.js). The wire protocol: docs/protocol.md.

export type State = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export class RtcError extends Error {
  /** The documented error code (`bad_request`, `kafka_unavailable`, …). */
  code: string;
  /** Whether the same request may succeed later. */
  retryable: boolean;
}

export class Backoff {
  constructor(initialMs?: number, maxMs?: number);
  next(): number;
  reset(): void;
}

export interface Options {
  /** The gateway's base URL: `http://host:8080` (ws://) or `https://host` (wss://). */
  url: string;
  clientId: string;
  /** A JWT for deployments that require one (its `sub` is the clientId), or a function giving one. */
  token?: string | (() => string | Promise<string>);
  /** Resume direct messages after this offset (a previous session's `offset`). */
  resumeOffset?: number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  connectTimeoutMs?: number;
  /** How often a `send` answered with a retryable error is sent again (same id). */
  sendRetries?: number;
  /** A WebSocket constructor (the platform's by default). */
  WebSocket?: typeof WebSocket;
  fetch?: typeof fetch;
}

export interface Welcome {
  node: string;
  epoch: number;
  recovered: boolean;
  offset: number;
}

export interface Message {
  from: string;
  id: string;
  data: unknown;
  /** Direct: the resume point; room: the room's position. */
  offset: number;
  room?: string;
}

export interface Joined {
  room: string;
  recovered: boolean;
  offset: number;
}

export interface MemberEvent {
  room: string;
  clientId: string;
  event: "join" | "leave";
}

export interface Events {
  welcome: Welcome;
  message: Message;
  joined: Joined;
  member: MemberEvent;
  state: State;
  error: RtcError;
}

export class RtcClient {
  constructor(opts: Options);
  readonly clientId: string;
  /** The node serving the current connection. */
  readonly node: string | null;
  /** Newest direct-message offset received. */
  readonly offset: number | null;
  readonly roomOffsets: Map<string, number>;
  readonly state: State;
  readonly reconnects: number;
  on<K extends keyof Events>(event: K, fn: (value: Events[K]) => void): () => void;
  connect(): Promise<Welcome>;
  send(to: string, data: unknown): Promise<{ offset: number }>;
  publish(room: string, data: unknown): Promise<{ offset: number }>;
  join(room: string, opts?: { last?: number; presence?: boolean }): Promise<Joined>;
  leave(room: string): Promise<{ offset?: number }>;
  presence(room: string): Promise<{ members: string[]; truncated: boolean }>;
  online(clientIds: string[]): Promise<string[]>;
  ping(): Promise<{}>;
  dropConnection(): void;
  close(): void;
}

export type PublishMessage =
  | { to: string; id: string; data: unknown; from?: string }
  | { room: string; id: string; data: unknown; from?: string };

export interface PublishResult {
  id: string;
  /** Where Kafka stored it (absent when refused). */
  offset?: number;
  /** The error code when this message was refused (docs/protocol.md). */
  error?: string;
  message?: string;
  retryable?: boolean;
}

/** One message: resolves once Kafka has it, with its offset; rejects with an RtcError. */
export function publishApi(
  url: string,
  apiKey: string,
  message: PublishMessage,
  fetchImpl?: typeof fetch,
): Promise<{ id: string; offset: number }>;
/** A batch of up to 1000, checked whole before anything is stored: a result per message. */
export function publishApi(
  url: string,
  apiKey: string,
  batch: { messages: PublishMessage[] },
  fetchImpl?: typeof fetch,
): Promise<{ results: PublishResult[] }>;
