// Accounts on the page: the account bar of the board pages (who is logged in, log
// out) and the sign-up and log-in forms. The forms show the server's own message
// for every refusal (taken name, wrong password, rate limit) and cannot be sent
// twice while a request is pending.
import { useEffect, useState, type FormEvent } from 'react';
import { describeError } from './api';
import { useAuth } from './auth';
import { PASSWORD_MAX, PASSWORD_MIN, USERNAME_MAX, USERNAME_MIN } from './board';
import { Link, navigate } from './router';
import { useTitle } from './ui';

/** Who is logged in, with log out; or links to log in and sign up. */
export function AccountBar() {
  const auth = useAuth();
  const [pending, setPending] = useState(false);
  const [error, setError] = useState('');

  const { load } = auth;
  useEffect(() => load(), [load]);

  const logout = async () => {
    setPending(true);
    setError('');
    try {
      await auth.logout();
    } catch (err) {
      setError(`Could not log out: ${describeError(err)}`);
    } finally {
      setPending(false);
    }
  };

  return (
    <div className="account" data-testid="account" data-state={auth.status}>
      {auth.status === 'logged-in' && auth.user ? (
        <>
          <span>
            Logged in as{' '}
            <strong data-testid="account-name" data-user-id={auth.user.id}>
              {auth.user.username}
            </strong>
          </span>
          <button
            type="button"
            className="secondary small"
            data-testid="logout"
            onClick={() => void logout()}
            disabled={pending}
          >
            {pending ? 'Logging out…' : 'Log out'}
          </button>
        </>
      ) : auth.status === 'logged-out' ? (
        <>
          <Link to="/login" data-testid="login-link">
            Log in
          </Link>
          <Link to="/signup" data-testid="signup-link">
            Sign up
          </Link>
        </>
      ) : (
        <span className="muted" data-testid="account-problem">
          {auth.problem || 'Checking who is logged in…'}
        </span>
      )}
      {error ? (
        <span className="inline-error" role="alert" data-testid="logout-error">
          {error}
        </span>
      ) : null}
    </div>
  );
}

type Mode = 'login' | 'signup';

const COPY: Record<Mode, { title: string; action: string; pending: string; other: string; otherTo: string }> = {
  login: {
    title: 'Log in',
    action: 'Log in',
    pending: 'Logging in…',
    other: 'No account yet? Sign up',
    otherTo: '/signup',
  },
  signup: {
    title: 'Sign up',
    action: 'Create account',
    pending: 'Creating account…',
    other: 'Have an account? Log in',
    otherTo: '/login',
  },
};

/** The log-in or sign-up page; on success it goes to the board. */
export function AuthPage({ mode }: { mode: Mode }) {
  const auth = useAuth();
  const copy = COPY[mode];
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [pending, setPending] = useState(false);
  const [error, setError] = useState('');
  useTitle(`Shoal — ${copy.title.toLowerCase()}`);

  const submit = async (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    if (pending) return;
    setPending(true);
    setError('');
    try {
      await (mode === 'login' ? auth.login(username, password) : auth.signup(username, password));
      navigate('/board');
    } catch (err) {
      setError(describeError(err));
      setPending(false);
    }
  };

  return (
    <main className="card auth-card" data-testid="auth-page" data-mode={mode}>
      <h1>{copy.title}</h1>
      {auth.status === 'logged-in' && auth.user ? (
        <p className="note" data-testid="auth-already">
          You are logged in as <strong>{auth.user.username}</strong>. Logging in here switches to another account.
        </p>
      ) : null}
      <form className="form" data-testid="auth-form" onSubmit={(e) => void submit(e)} noValidate>
        <label className="field">
          <span>Username</span>
          <input
            name="username"
            autoComplete="username"
            autoCapitalize="none"
            spellCheck={false}
            required
            maxLength={USERNAME_MAX * 4}
            value={username}
            onChange={(e) => setUsername(e.target.value)}
            aria-describedby={mode === 'signup' ? 'username-hint' : undefined}
            data-testid="auth-username"
          />
          {mode === 'signup' ? (
            <small id="username-hint" className="hint">
              {USERNAME_MIN}–{USERNAME_MAX} letters, digits, <code>_</code> <code>.</code> <code>-</code>
            </small>
          ) : null}
        </label>
        <label className="field">
          <span>Password</span>
          <input
            name="password"
            type="password"
            autoComplete={mode === 'login' ? 'current-password' : 'new-password'}
            required
            maxLength={PASSWORD_MAX * 4}
            value={password}
            onChange={(e) => setPassword(e.target.value)}
            aria-describedby={mode === 'signup' ? 'password-hint' : undefined}
            data-testid="auth-password"
          />
          {mode === 'signup' ? (
            <small id="password-hint" className="hint">
              {PASSWORD_MIN}–{PASSWORD_MAX} characters
            </small>
          ) : null}
        </label>
        <p className="error" role="alert" data-testid="auth-error">
          {error}
        </p>
        <div className="actions">
          <button type="submit" data-testid="auth-submit" disabled={pending}>
            {pending ? copy.pending : copy.action}
          </button>
          <Link to={copy.otherTo} className="quiet-link">
            {copy.other}
          </Link>
        </div>
      </form>
    </main>
  );
}
