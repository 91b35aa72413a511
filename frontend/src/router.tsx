// Client-side routing in a few lines: the page's location is the browser's
// (history.pushState / replaceState), every change is announced with one event, and
// <Link> turns a plain click into a navigation without a page load. The edge answers
// index.html for every path without a file extension, so each route is also a URL
// that works on reload.
import { useSyncExternalStore, type MouseEvent, type ReactNode } from 'react';

const CHANGE_EVENT = 'shoal:navigate';

function subscribe(onChange: () => void): () => void {
  window.addEventListener('popstate', onChange);
  window.addEventListener(CHANGE_EVENT, onChange);
  return () => {
    window.removeEventListener('popstate', onChange);
    window.removeEventListener(CHANGE_EVENT, onChange);
  };
}

function snapshot(): string {
  return window.location.pathname + window.location.search;
}

/** Goes to `to` (a same-origin path with an optional query); `replace` rewrites the current entry. */
export function navigate(to: string, { replace = false } = {}): void {
  if (to === snapshot()) return;
  if (replace) window.history.replaceState(null, '', to);
  else window.history.pushState(null, '', to);
  if (!replace) window.scrollTo(0, 0);
  window.dispatchEvent(new Event(CHANGE_EVENT));
}

/** The current path and query parameters; re-renders on every navigation. */
export function useLocation(): { path: string; params: URLSearchParams } {
  const current = useSyncExternalStore(subscribe, snapshot);
  const url = new URL(current, window.location.origin);
  return { path: url.pathname, params: url.searchParams };
}

interface LinkProps {
  to: string;
  children: ReactNode;
  className?: string;
  'data-testid'?: string;
  'aria-current'?: 'page';
}

/** An ordinary link (open in a new tab keeps working) that navigates in place on a plain click. */
export function Link({ to, children, ...rest }: LinkProps) {
  const onClick = (event: MouseEvent<HTMLAnchorElement>) => {
    if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    navigate(to);
  };
  return (
    <a href={to} onClick={onClick} {...rest}>
      {children}
    </a>
  );
}
