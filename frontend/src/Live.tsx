// The live connection on the page: <LiveSession> starts it when someone is logged
// in and stops it on log-out (a log-in is a new session, so a new socket), and
// <LiveIndicator> shows its state in the top bar.
import { useEffect, useRef } from 'react';
import { useAuth, wasLoggedIn, type AuthStatus } from './auth';
import { live, useLiveStatus, type LiveState } from './live';

const LABELS: Record<LiveState, string> = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  offline: 'Offline',
};

const TITLES: Record<LiveState, string> = {
  connecting: 'Connecting for live updates',
  live: 'Live updates on',
  reconnecting: 'Connection lost: reconnecting, then catching up on what was missed',
  offline: 'No live updates (they need a logged-in session)',
};

/** Keeps the live connection in step with who is logged in. Renders nothing. */
export function LiveSession() {
  const { status, user, load, lost } = useAuth();

  // The counter page does not ask who is logged in by itself: ask when this browser
  // was logged in last, so its view counter can go live.
  useEffect(() => {
    if (status === 'unknown' && wasLoggedIn()) load();
  }, [status, load]);

  const previous = useRef<AuthStatus>(status);
  useEffect(() => {
    const was = previous.current;
    previous.current = status;
    if (status === 'logged-in' && user) {
      // The first answer of the page's session: main.tsx may have started already.
      // Any later user (a log-in) is a new session, hence a new socket.
      if (was === 'unknown') live.start();
      else live.restart();
    } else if (status === 'logged-out') {
      live.stop();
    }
  }, [status, user]);

  // Logged out elsewhere, or the session ended under the socket (4401): the page
  // switches to logged out, which offers Log in where it matters. It does not jump
  // to /login by itself: a log-out or "Forget me" on this very page ends the
  // session too, and the page should stay where the person is.
  useEffect(() => {
    live.onEnd(() => lost());
    return () => live.onEnd(null);
  }, [lost]);

  useEffect(() => () => live.stop(), []);
  return null;
}

/** "Live · edge-2", "Reconnecting…", … with data-state, data-edge and data-channels
 *  (the subscribed channels, space-separated) for tests. */
export function LiveIndicator() {
  const { state, edge, channels } = useLiveStatus();
  const shownEdge = state === 'live' && edge ? edge : null;
  return (
    <span
      className={`live-indicator live-${state}`}
      data-testid="live-indicator"
      data-state={state}
      data-edge={shownEdge ?? undefined}
      data-channels={channels.join(' ')}
      role="status"
      title={shownEdge ? `${TITLES[state]} (edge ${shownEdge})` : TITLES[state]}
    >
      <span className="live-dot" aria-hidden="true" />
      {LABELS[state]}
      {shownEdge ? <span className="live-edge"> · {shownEdge}</span> : null}
    </span>
  );
}
