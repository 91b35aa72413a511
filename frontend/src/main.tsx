// Entry point: mounts the page. Styles come from a CSS file (the edge's CSP has
// style-src 'self', so no inline <style>).
import { createRoot } from 'react-dom/client';
import { App } from './App';
import { wasLoggedIn } from './auth';
import { live } from './live';
import './app.css';

const rootElement = document.getElementById('root');
if (!rootElement) throw new Error('index.html has no #root element');

// No <StrictMode>: in development it runs effects twice, and every GET /api/session
// counts a view, so the counter would jump by two on load.
// A browser that was logged in connects at once, before the pages load their data:
// they then wait for their live subscription and load once (see useLiveChannel).
if (wasLoggedIn()) live.start();
createRoot(rootElement).render(<App />);
