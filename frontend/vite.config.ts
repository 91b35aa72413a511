// Vite build for the Shoal front end. The edge serves dist/ as static files under
// a strict CSP, so the output must be plain files: no inline scripts or styles.
import { defineConfig } from 'vite';

// Where `npm run dev` forwards API calls: the edge of a stack running on loopback.
const API_TARGET = 'http://127.0.0.1:8080';

export default defineConfig({
  base: '/',
  // No React plugin: esbuild compiles TSX with the automatic runtime (tsconfig "jsx": "react-jsx").
  esbuild: { jsx: 'automatic' },
  build: {
    outDir: 'dist',
    assetsDir: 'assets',
    emptyOutDir: true,
    // No source maps in the served tree; the edge would need an extra MIME type for .map.
    sourcemap: false,
    // The entry's small CSS must stay a separate file: style-src 'self' forbids inline styles.
    cssCodeSplit: true,
    // The modulepreload polyfill is only needed for dynamic imports, which the app does not use.
    modulePreload: { polyfill: false },
  },
  server: {
    host: '127.0.0.1',
    proxy: {
      '/api': { target: API_TARGET, changeOrigin: false },
      '/health': { target: API_TARGET, changeOrigin: false },
      // The live connection (WebSocket upgrade of GET /ws).
      '/ws': { target: API_TARGET, changeOrigin: false, ws: true },
    },
  },
});
