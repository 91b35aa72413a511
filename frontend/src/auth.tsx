// Who is logged in, for every board page: one provider asks GET /api/me (401 means
// logged out) the first time a page needs to know, retries while the service is
// unavailable, and changes on sign-up, log-in, log-out and on a call that found the
// session gone. The counter page asks only when this browser was logged in last
// (see wasLoggedIn), so a logged-out visitor makes no call there that can answer 401.
import { createContext, useCallback, useContext, useMemo, useRef, useState, type ReactNode } from 'react';
import * as board from './board';
import type { User } from './board';
import { failureMessage, isPassing, retryDelayMs, retryingMessage } from './retry';

export type AuthStatus = 'unknown' | 'logged-out' | 'logged-in';

export interface Auth {
  status: AuthStatus;
  user: User | null;
  /** Why the status is still unknown ('' while simply loading). */
  problem: string;
  /** Finds out who is logged in, once; later calls do nothing. */
  load: () => void;
  signup: (username: string, password: string) => Promise<void>;
  login: (username: string, password: string) => Promise<void>;
  logout: () => Promise<void>;
  /** A call answered 401: the session is gone. */
  lost: () => void;
}

const AuthContext = createContext<Auth | null>(null);

/** Remembers (across loads, in localStorage) that this browser was logged in last,
 *  so a page that does not ask who is logged in (the counter page) knows whether
 *  asking is worth it: a logged-out visitor makes no call that answers 401. Holds
 *  no secret: only "1". */
const LOGGED_IN_HINT = 'shoal.logged-in';

function rememberLoggedIn(loggedIn: boolean): void {
  try {
    if (loggedIn) window.localStorage.setItem(LOGGED_IN_HINT, '1');
    else window.localStorage.removeItem(LOGGED_IN_HINT);
  } catch {
    // Storage disabled: the counter page then stays without live updates.
  }
}

/** True when this browser was logged in when it last knew. */
export function wasLoggedIn(): boolean {
  try {
    return window.localStorage.getItem(LOGGED_IN_HINT) === '1';
  } catch {
    return false;
  }
}

export function AuthProvider({ children }: { children: ReactNode }) {
  const [user, setUser] = useState<User | null>(null);
  const [status, setStatus] = useState<AuthStatus>('unknown');
  const [problem, setProblem] = useState('');
  const started = useRef(false);
  // Bumped by every change of who is logged in, so a late /api/me answer cannot undo it.
  const version = useRef(0);

  const settle = useCallback((next: User | null) => {
    version.current++;
    rememberLoggedIn(next !== null);
    setUser(next);
    setStatus(next ? 'logged-in' : 'logged-out');
    setProblem('');
  }, []);

  const load = useCallback(() => {
    if (started.current) return;
    started.current = true;
    const mine = version.current;
    let attempt = 0;
    const run = async () => {
      try {
        const me = await board.fetchMe();
        if (version.current === mine) settle(me);
      } catch (err) {
        if (version.current !== mine) return;
        if (isPassing(err)) {
          setProblem(retryingMessage(err));
          window.setTimeout(() => void run(), retryDelayMs(err, attempt++));
        } else {
          setProblem(`Could not find out who is logged in: ${failureMessage(err)}`);
          started.current = false; // the next page that needs it asks again
        }
      }
    };
    void run();
  }, [settle]);

  const value = useMemo<Auth>(
    () => ({
      status,
      user,
      problem,
      load,
      signup: async (username, password) => settle(await board.signup(username, password)),
      login: async (username, password) => settle(await board.login(username, password)),
      logout: async () => {
        await board.logout();
        settle(null);
      },
      lost: () => settle(null),
    }),
    [status, user, problem, load, settle],
  );
  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}

/** The auth state of the page; the component must be inside <AuthProvider>. */
export function useAuth(): Auth {
  const auth = useContext(AuthContext);
  if (!auth) throw new Error('useAuth outside <AuthProvider>');
  return auth;
}
