// The page shell: a top bar with the pages, the live connection's state and, on the
// board's pages, the account; below it the page the URL names.
//   /              session counter and cluster panel
//   /board         the board (?q= search)
//   /items/:id     one item
//   /login, /signup
import { AccountBar, AuthPage } from './Account';
import { AuthProvider } from './auth';
import { BoardPage } from './Board';
import { CounterPage } from './CounterPage';
import { ItemPage } from './ItemPage';
import { LiveIndicator, LiveSession } from './Live';
import { Link, useLocation } from './router';
import { useTitle } from './ui';

type Route =
  | { page: 'counter' }
  | { page: 'board' }
  | { page: 'item'; segment: string }
  | { page: 'login' }
  | { page: 'signup' }
  | { page: 'missing' };

function route(path: string): Route {
  const clean = path.length > 1 ? path.replace(/\/+$/, '') : path;
  if (clean === '/' || clean === '/index.html') return { page: 'counter' };
  if (clean === '/board') return { page: 'board' };
  if (clean === '/login') return { page: 'login' };
  if (clean === '/signup') return { page: 'signup' };
  const item = /^\/items\/([^/]+)$/.exec(clean);
  if (item) return { page: 'item', segment: item[1] };
  return { page: 'missing' };
}

function MissingPage() {
  useTitle('Shoal — page not found');
  return (
    <main className="card" data-testid="missing-page">
      <h1>Page not found</h1>
      <p className="note">
        Nothing lives at this address. Go to the <Link to="/board">board</Link> or the{' '}
        <Link to="/">session counter</Link>.
      </p>
    </main>
  );
}

function TopBar({ current, account }: { current: Route['page']; account: boolean }) {
  return (
    <header className="topbar">
      <Link to="/" className="topbar-brand">
        Shoal
      </Link>
      <nav aria-label="Pages" className="topbar-nav">
        <Link to="/" data-testid="nav-counter" aria-current={current === 'counter' ? 'page' : undefined}>
          Counter
        </Link>
        <Link to="/board" data-testid="nav-board" aria-current={current === 'board' ? 'page' : undefined}>
          Board
        </Link>
      </nav>
      <LiveIndicator />
      {/* Only the board's pages ask who is logged in: the counter page makes no call that may answer 401. */}
      {account ? <AccountBar /> : null}
    </header>
  );
}

function Page({ current }: { current: Route }) {
  switch (current.page) {
    case 'counter':
      return <CounterPage />;
    case 'board':
      return <BoardPage />;
    case 'item':
      return <ItemPage key={current.segment} segment={current.segment} />;
    case 'login':
    case 'signup':
      return <AuthPage key={current.page} mode={current.page} />;
    case 'missing':
      return <MissingPage />;
  }
}

export function App() {
  const { path } = useLocation();
  const current = route(path);
  return (
    <AuthProvider>
      <LiveSession />
      <TopBar current={current.page} account={current.page !== 'counter' && current.page !== 'missing'} />
      <Page current={current} />
    </AuthProvider>
  );
}
