// The session counter page (/): shows the view count of the browser's session and
// which edge and session instances served it; Reload counts a view, Forget me
// ends the session and starts a new one. Below it, the cluster panel. While the
// live connection is up (a logged-in session), the count follows views made
// elsewhere (other tabs) through the session's own channel `me`. That channel is
// not reloaded over REST on (re)subscription, against the design's usual rule:
// reading the counter counts a view, so the next event brings the value instead.
import { useCallback, useEffect, useRef, useState } from 'react';
import { describeError, fetchSession, forgetSession, type SessionInfo } from './api';
import { Cluster } from './Cluster';
import { live } from './live';
import { Time, useTitle } from './ui';

type LoadState = 'loading' | 'ready' | 'error';

const PLACEHOLDER = '—';

export function CounterPage() {
  const [session, setSession] = useState<SessionInfo | null>(null);
  const [state, setState] = useState<LoadState>('loading');
  const [error, setError] = useState('');
  // Only the latest action may update the page: a slow earlier reply must not
  // overwrite a newer one.
  const latest = useRef(0);
  // Highest count a live `views` event announced for this session (0: none).
  const [liveViews, setLiveViews] = useState(0);
  useTitle('Shoal — session counter');

  useEffect(
    () =>
      live.subscribe('me', {
        onEvent: (event) => {
          const views = event.data.views;
          if (event.event === 'views' && typeof views === 'number' && Number.isSafeInteger(views)) {
            setLiveViews((prev) => Math.max(prev, views));
          }
        },
      }),
    [],
  );

  const run = useCallback(async (action: () => Promise<SessionInfo>) => {
    const id = ++latest.current;
    setState('loading');
    try {
      const next = await action();
      if (id !== latest.current) return;
      setSession(next);
      setError('');
      setState('ready');
    } catch (err) {
      if (id !== latest.current) return;
      // Keep the last good values on screen; only the alert changes.
      setError(describeError(err));
      setState('error');
    }
  }, []);

  useEffect(() => {
    void run(fetchSession);
  }, [run]);

  const reload = () => void run(fetchSession);
  const forget = () =>
    void run(async () => {
      setLiveViews(0);
      await forgetSession();
      return fetchSession();
    });

  return (
    <>
      <main className="card" data-state={state} aria-busy={state === 'loading'}>
        <header>
          <h1>Session counter</h1>
          <p className="lede">Every load of this page counts one view of your session.</p>
        </header>

        <p className="error" role="alert" data-testid="error">
          {error}
        </p>

        <dl className="facts">
          <div className="fact fact-views">
            <dt id="views-label">Views</dt>
            <dd data-testid="views" aria-labelledby="views-label" aria-live="polite" aria-atomic="true">
              {session ? Math.max(session.views, liveViews) : liveViews > 0 ? liveViews : PLACEHOLDER}
            </dd>
          </div>
          <div className="fact">
            <dt>Served by edge</dt>
            <dd data-testid="edge">{session ? session.edge : PLACEHOLDER}</dd>
          </div>
          <div className="fact">
            <dt>Session instance</dt>
            <dd data-testid="session-instance">{session ? session.sessionInstance : PLACEHOLDER}</dd>
          </div>
          <div className="fact">
            <dt>Session started</dt>
            <dd data-testid="created-at">{session ? <Time ms={session.createdAt} /> : PLACEHOLDER}</dd>
          </div>
        </dl>

        <div className="actions">
          <button type="button" data-testid="reload" onClick={reload}>
            Reload
          </button>
          <button type="button" className="secondary" data-testid="forget" onClick={forget}>
            Forget me
          </button>
        </div>
      </main>
      <Cluster />
    </>
  );
}
