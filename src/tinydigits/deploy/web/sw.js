// The static site's service worker: the site's files (listed by `tinydigits export --format
// web`, which also sets the version from their contents) are cached at install, then served
// from the cache, so the page and its models work offline after the first visit. A new
// export is a new version: its files are cached anew and the old cache deleted.
"use strict";

const VERSION = "__VERSION__";
const FILES = ["__FILES__"];
const PREFIX = `tinydigits-${self.registration.scope}-`;
const CACHE = PREFIX + VERSION;

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(FILES)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k.startsWith(PREFIX) && k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET" || new URL(request.url).origin !== self.location.origin) return;
  event.respondWith(caches.open(CACHE)
    .then((cache) => cache.match(request, { ignoreSearch: true }))
    .then((hit) => hit || fetch(request)));
});
