// Live updates: one WebSocket to the edge (GET /ws, subprotocol shoal.v1) for the
// whole page. Components subscribe to channels (`board`, `item:<id>`, `me`,
// `cluster`); the client keeps, per ordered channel, the last position (epoch,
// offset) it saw, resubscribes with `since` after a reconnect so the edge replays
// what was missed, drops events it has already seen, and tells a channel's
// listeners to reload over REST whenever the edge cannot vouch for the gap
// (`subscribed` without `recovered: true`).
//
// Before every connection attempt it calls GET /api/me: that renews the `shoal_ws`
// proof cookie the upgrade needs, and a 401 means nobody is logged in, so it stops.
// Reconnects back off exponentially with full jitter (250 ms doubling to 10 s; reset
// once a connection stayed open 10 s).
import { useEffect, useRef, useState, useSyncExternalStore } from 'react';
import { isObject } from './api';
import { fetchMe, type User } from './board';

/** `connecting`: the first attempt since start; `live`: `hello` received; `reconnecting`:
 *  waiting for or making a later attempt; `offline`: not wanted (logged out, stopped). */
export type LiveState = 'connecting' | 'live' | 'reconnecting' | 'offline';

export interface LiveStatus {
  state: LiveState;
  /** The edge instance the socket is on (from `hello`); null while not live. */
  edge: string | null;
  /** Channels whose `subscribed` arrived on this socket, sorted. */
  channels: readonly string[];
}

/** An event as the edge sent it. `epoch`/`offset` only on ordered channels. */
export interface LiveEvent {
  channel: string;
  event: string;
  data: Record<string, unknown>;
  epoch: string | null;
  offset: number | null;
}

export interface ChannelListener {
  /** An event of the channel, at most once and in order. */
  onEvent?: (event: LiveEvent) => void;
  /**
   * `subscribed` arrived. `recovered` false: what the page shows may have missed
   * events (a first subscription, or history that no longer covers the gap), so it
   * must load again over REST; true: every missed event was replayed before this.
   */
  onSubscribed?: (recovered: boolean) => void;
  /** The edge refused the channel (`error` naming it): no events will come. */
  onRefused?: (code: string) => void;
}

/** Longest wait for `subscribed` before a page loads over REST anyway. */
const SUBSCRIBE_WAIT_MS = 2000;

/** Why the live connection ended for good: logged out (401 from /api/me) or the
 *  session ended under an open socket (close 4401). */
export type LiveEnd = 'logged-out' | 'session-ended';

export const WS_PATH = '/ws';
export const WS_SUBPROTOCOL = 'shoal.v1';

const BACKOFF_BASE_MS = 250;
const BACKOFF_CAP_MS = 10_000;
/** A connection open this long resets the backoff. */
const STABLE_AFTER_MS = 10_000;
/** A ping is sent when the socket was quiet this long ... */
const PING_IDLE_MS = 25_000;
/** ... and the socket is given up when nothing arrives this long after it. */
const PONG_TIMEOUT_MS = 10_000;
/** A socket that has not said hello this long after opening is given up. */
const HELLO_TIMEOUT_MS = 10_000;
/** The session ended under an open socket. */
const CLOSE_SESSION_ENDED = 4401;

interface Position {
  epoch: string;
  offset: number;
}

interface Channel {
  listeners: Set<ChannelListener>;
  /** Last ordered event seen; null until the first `subscribed` of an ordered channel. */
  position: Position | null;
  /** A subscribe was sent on the current socket. */
  sent: boolean;
  /** Its `subscribed` arrived: events flow. */
  confirmed: boolean;
}

/** Delay before reconnect attempt `attempt` (0-based): full jitter over 250 ms · 2^n, at most 10 s. */
export function backoffMs(attempt: number, random: () => number = Math.random): number {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 16));
  return Math.floor(random() * ceiling);
}

/** ws(s)://<this host>/ws */
export function liveUrl(location: Location = window.location): string {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${WS_PATH}`;
}

function toEvent(msg: Record<string, unknown>): LiveEvent | null {
  if (typeof msg.channel !== 'string' || typeof msg.event !== 'string') return null;
  const ordered = typeof msg.epoch === 'string' && typeof msg.offset === 'number' && msg.offset > 0;
  return {
    channel: msg.channel,
    event: msg.event,
    data: isObject(msg.data) ? msg.data : {},
    epoch: ordered ? (msg.epoch as string) : null,
    offset: ordered ? (msg.offset as number) : null,
  };
}

export class LiveClient {
  private status: LiveStatus = { state: 'offline', edge: null, channels: [] };
  private readonly statusListeners = new Set<() => void>();
  private readonly channels = new Map<string, Channel>();
  private endListener: ((why: LiveEnd) => void) | null = null;

  /** True between start() and stop() (or an end). */
  private wanted = false;
  /** Bumped by start() and stop(): callbacks of an older run do nothing. */
  private run = 0;
  private socket: WebSocket | null = null;
  /** The run whose connect() is asking /api/me (-1: none). */
  private openingRun = -1;
  private attempt = 0;
  private retryTimer: number | undefined;
  private stableTimer: number | undefined;
  private idleTimer: number | undefined;
  private onlineHandler: (() => void) | null = null;

  // --- state ----------------------------------------------------------------

  getStatus = (): LiveStatus => this.status;

  /** Calls `onChange` whenever getStatus() changes; returns the unsubscribe function. */
  subscribeStatus = (onChange: () => void): (() => void) => {
    this.statusListeners.add(onChange);
    return () => this.statusListeners.delete(onChange);
  };

  /** `onEnd` hears why the client stopped by itself (logged out, session ended). */
  onEnd(onEnd: ((why: LiveEnd) => void) | null): void {
    this.endListener = onEnd;
  }

  private setStatus(state: LiveState, edge: string | null): void {
    const channels = [...this.channels].filter(([, entry]) => entry.confirmed).map(([name]) => name).sort();
    const same =
      this.status.state === state &&
      this.status.edge === edge &&
      this.status.channels.length === channels.length &&
      this.status.channels.every((name, i) => name === channels[i]);
    if (same) return;
    this.status = { state, edge, channels };
    for (const listener of [...this.statusListeners]) listener();
  }

  /** Announces a change of the confirmed channels. */
  private channelsChanged(): void {
    this.setStatus(this.status.state, this.status.edge);
  }

  // --- channels -------------------------------------------------------------

  /**
   * Adds `listener` to `channel` (subscribing on the socket when it is the first).
   * Returns the function that removes it (unsubscribing after the last one).
   */
  subscribe(channel: string, listener: ChannelListener): () => void {
    let entry = this.channels.get(channel);
    if (!entry) {
      entry = { listeners: new Set(), position: null, sent: false, confirmed: false };
      this.channels.set(channel, entry);
    }
    entry.listeners.add(listener);
    if (!entry.sent && this.status.state === 'live') this.sendSubscribe(channel, entry);
    return () => {
      const current = this.channels.get(channel);
      if (!current || !current.listeners.delete(listener) || current.listeners.size > 0) return;
      this.channels.delete(channel);
      if (current.sent) this.send({ type: 'unsubscribe', channel });
      if (current.confirmed) this.channelsChanged();
    };
  }

  /** True while the socket is open and greeted. */
  isLive(): boolean {
    return this.status.state === 'live';
  }

  /** True while connecting for the first time or live: a subscription is on its way. */
  isComing(): boolean {
    return this.status.state === 'connecting' || this.status.state === 'live';
  }

  /** True when `channel` has events coming: its `subscribed` arrived on the live socket. */
  isSubscribed(channel: string): boolean {
    return this.channels.get(channel)?.confirmed === true;
  }

  private sendSubscribe(channel: string, entry: Channel): void {
    const msg: Record<string, unknown> = { type: 'subscribe', channel };
    if (entry.position) msg.since = { epoch: entry.position.epoch, offset: entry.position.offset };
    entry.sent = this.send(msg);
  }

  private send(msg: unknown): boolean {
    const socket = this.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify(msg));
    return true;
  }

  // --- connection -----------------------------------------------------------

  /** Starts connecting (a logged-in page); does nothing when already started. */
  start(): void {
    if (this.wanted) return;
    this.wanted = true;
    this.run++;
    this.attempt = 0;
    this.setStatus('connecting', null);
    if (!this.onlineHandler) {
      this.onlineHandler = () => {
        // Back online: try now instead of at the end of a long backoff.
        if (this.wanted && !this.socket && this.openingRun !== this.run) {
          window.clearTimeout(this.retryTimer);
          void this.connect(this.run);
        }
      };
      window.addEventListener('online', this.onlineHandler);
    }
    void this.connect(this.run);
  }

  /** Closes the socket and stops reconnecting (logged out). Channels stay registered. */
  stop(): void {
    this.wanted = false;
    this.run++;
    this.teardown();
    for (const entry of this.channels.values()) entry.position = null;
    this.setStatus('offline', null);
    if (this.onlineHandler) {
      window.removeEventListener('online', this.onlineHandler);
      this.onlineHandler = null;
    }
  }

  /** Stop, then start again: a new session (log-in) needs a new socket. */
  restart(): void {
    this.stop();
    this.start();
  }

  private end(why: LiveEnd): void {
    this.stop();
    this.endListener?.(why);
  }

  private teardown(): void {
    window.clearTimeout(this.retryTimer);
    window.clearTimeout(this.stableTimer);
    window.clearTimeout(this.idleTimer);
    this.retryTimer = this.stableTimer = this.idleTimer = undefined;
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      if (socket.readyState === WebSocket.CONNECTING || socket.readyState === WebSocket.OPEN) socket.close(1000);
    }
    for (const entry of this.channels.values()) entry.sent = entry.confirmed = false;
  }

  private scheduleReconnect(run: number): void {
    if (run !== this.run || !this.wanted) return;
    // Every attempt after the first is "reconnecting", live before or not: pages
    // waiting for their subscription then load over REST instead of waiting on.
    this.setStatus('reconnecting', null);
    if (navigator.onLine === false) return; // the 'online' event tries again
    const delay = backoffMs(this.attempt++);
    window.clearTimeout(this.retryTimer);
    this.retryTimer = window.setTimeout(() => void this.connect(run), delay);
  }

  private async connect(run: number): Promise<void> {
    if (run !== this.run || !this.wanted || this.socket || this.openingRun === run) return;
    this.openingRun = run;
    let me: User | null | undefined;
    // Renews the proof cookie the upgrade needs; 401 = nobody logged in.
    try {
      me = await fetchMe();
    } catch {
      // The edge or the session service is unavailable now: try again later.
      me = undefined;
    } finally {
      if (this.openingRun === run) this.openingRun = -1;
    }
    if (run !== this.run || !this.wanted || this.socket) return;
    if (me === null) {
      this.end('logged-out');
      return;
    }
    if (me === undefined) {
      this.scheduleReconnect(run);
      return;
    }

    let socket: WebSocket;
    try {
      socket = new WebSocket(liveUrl(), WS_SUBPROTOCOL);
    } catch {
      this.scheduleReconnect(run);
      return;
    }
    this.socket = socket;
    let openedAt = 0;
    socket.onopen = () => {
      openedAt = Date.now();
      this.armIdle(run, HELLO_TIMEOUT_MS, false);
      this.stableTimer = window.setTimeout(() => {
        this.attempt = 0;
      }, STABLE_AFTER_MS);
    };
    socket.onmessage = (e) => {
      if (run !== this.run) return;
      this.armIdle(run, PING_IDLE_MS, true);
      if (typeof e.data === 'string') this.receive(e.data);
    };
    socket.onclose = (e) => {
      if (run !== this.run || this.socket !== socket) return;
      this.teardown();
      if (openedAt !== 0 && Date.now() - openedAt >= STABLE_AFTER_MS) this.attempt = 0;
      if (e.code === CLOSE_SESSION_ENDED) {
        this.end('session-ended');
        return;
      }
      // 1001 (edge draining), 1006 (gone), 4001 (slow consumer), 1011, 1013 and
      // anything else: reconnect and resume from the positions kept.
      this.scheduleReconnect(run);
    };
    // An error is always followed by close, which does the work.
    socket.onerror = () => undefined;
  }

  /**
   * (Re)arms the quiet-socket timer: after `ms` without a message, either send a
   * ping and wait PONG_TIMEOUT_MS more (`ping`), or give the socket up.
   */
  private armIdle(run: number, ms: number, ping: boolean): void {
    window.clearTimeout(this.idleTimer);
    this.idleTimer = window.setTimeout(() => {
      if (run !== this.run || !this.socket) return;
      if (ping && this.send({ type: 'ping' })) {
        this.armIdle(run, PONG_TIMEOUT_MS, false);
        return;
      }
      // Silent for too long: a half-open connection. Start over.
      this.teardown();
      this.scheduleReconnect(run);
    }, ms);
  }

  private receive(text: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(text);
    } catch {
      return; // not ours to fix; the edge only sends JSON
    }
    if (!isObject(msg)) return;
    switch (msg.type) {
      case 'hello':
        this.setStatus('live', typeof msg.edge === 'string' ? msg.edge : '');
        for (const [channel, entry] of this.channels) if (!entry.sent) this.sendSubscribe(channel, entry);
        return;
      case 'event': {
        const event = toEvent(msg);
        if (event) this.deliver(event);
        return;
      }
      case 'subscribed':
        if (typeof msg.channel === 'string') this.subscribed(msg.channel, msg);
        return;
      case 'error':
        if (typeof msg.channel === 'string') {
          const entry = this.channels.get(msg.channel);
          const code = typeof msg.code === 'string' ? msg.code : 'error';
          if (entry) {
            entry.sent = entry.confirmed = false;
            for (const l of [...entry.listeners]) l.onRefused?.(code);
            this.channelsChanged();
          }
        }
        return;
      default:
        return; // pong, or a newer message type
    }
  }

  private deliver(event: LiveEvent): void {
    const entry = this.channels.get(event.channel);
    if (!entry) return;
    if (event.epoch !== null && event.offset !== null) {
      const at = entry.position;
      if (at && at.epoch === event.epoch && event.offset <= at.offset) return; // seen already
      entry.position = { epoch: event.epoch, offset: event.offset };
    }
    for (const l of [...entry.listeners]) l.onEvent?.(event);
  }

  private subscribed(channel: string, msg: Record<string, unknown>): void {
    const entry = this.channels.get(channel);
    if (!entry) return;
    if (typeof msg.epoch === 'string' && typeof msg.offset === 'number' && Number.isSafeInteger(msg.offset)) {
      entry.position = { epoch: msg.epoch, offset: msg.offset };
    }
    entry.confirmed = true;
    for (const l of [...entry.listeners]) l.onSubscribed?.(msg.recovered === true);
    this.channelsChanged();
  }
}

/** The page's one live connection. */
export const live = new LiveClient();

/** The live connection's state and edge; re-renders on every change. */
export function useLiveStatus(): LiveStatus {
  return useSyncExternalStore(live.subscribeStatus, live.getStatus);
}

/**
 * Subscribes to `channel` (none when null) while the component is mounted and hands
 * its events to `onEvent`. Returns when to load over REST: null = not yet (the
 * socket is connecting or live and the subscription is on its way: loading after
 * it means no event can fall between the REST answer and the first event, and
 * saves a second load; at most SUBSCRIBE_WAIT_MS), otherwise a number
 * that changes whenever the page must load again (events were lost). Put it in the
 * key of the load.
 */
export function useLiveChannel(channel: string | null, onEvent: (event: LiveEvent) => void): number | null {
  const onEventRef = useRef(onEvent);
  onEventRef.current = onEvent;
  const waitsAtFirst = () => channel !== null && live.isComing() && !live.isSubscribed(channel);
  const [sync, setSync] = useState<{ channel: string | null; key: number | null }>(() => ({
    channel,
    key: waitsAtFirst() ? null : 0,
  }));

  useEffect(() => {
    if (channel === null) {
      setSync({ channel, key: 0 });
      return;
    }
    let waiting = waitsAtFirst();
    setSync({ channel, key: waiting ? null : 0 });
    const open = () => {
      if (!waiting) return;
      waiting = false;
      window.clearTimeout(timer);
      setSync({ channel, key: 0 });
    };
    // Waiting only makes sense while the socket is live; and never for long.
    const timer = waiting ? window.setTimeout(open, SUBSCRIBE_WAIT_MS) : undefined;
    const stopStatus = live.subscribeStatus(() => {
      if (!live.isComing()) open();
    });
    const stopChannel = live.subscribe(channel, {
      onEvent: (event) => onEventRef.current(event),
      onSubscribed: (recovered) => {
        if (waiting) open();
        else if (!recovered) setSync((prev) => ({ channel, key: (prev.key ?? 0) + 1 }));
      },
      onRefused: open,
    });
    return () => {
      window.clearTimeout(timer);
      stopStatus();
      stopChannel();
    };
    // waitsAtFirst reads only `channel` and the live client.
  }, [channel]);

  if (sync.channel !== channel) return waitsAtFirst() ? null : 0;
  return sync.key;
}
