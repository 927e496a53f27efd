// Ebb console, v1 (written for Ebb, served from the binary). The pages work
// without it; with it they update themselves when a grant changes (server-sent
// events from /console/events) and live grants count down to not-after.
'use strict';
(function () {
  function left(ms) {
    if (ms <= 0) return 'ended';
    var s = Math.floor(ms / 1000);
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    s = s % 60;
    return (h ? h + 'h ' : '') + (h || m ? m + 'm ' : '') + s + 's';
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll('[data-not-after]').forEach(function (el) {
      el.textContent = left(Number(el.getAttribute('data-not-after')) - now);
    });
  }
  // Re-reads the page and swaps its <main>, keeping what the person is typing.
  var refreshing = false, again = false;
  function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    fetch(location.href, { credentials: 'same-origin', headers: { 'Accept': 'text/html' } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var next = new DOMParser().parseFromString(html, 'text/html').querySelector('main');
        var current = document.querySelector('main');
        if (!next || !current) return;
        current.querySelectorAll('textarea[id], select[id], input[id]:not([type=hidden])').forEach(function (el) {
          var twin = next.querySelector('#' + CSS.escape(el.id));
          if (twin && el.value) twin.value = el.value;
        });
        // What the last action did is said once by the server: keep it in view.
        var flash = current.querySelector('#flash');
        if (flash && !next.querySelector('#flash')) next.insertBefore(flash, next.firstChild);
        var focused = document.activeElement && document.activeElement.id;
        current.replaceWith(next);
        if (focused) { var f = document.getElementById(focused); if (f) f.focus(); }
        tick();
        var status = document.getElementById('live-status');
        if (status) status.textContent = 'Updated ' + new Date().toLocaleTimeString();
      })
      .catch(function () {})
      .finally(function () {
        refreshing = false;
        if (again) { again = false; refresh(); }
      });
  }
  document.addEventListener('DOMContentLoaded', function () {
    tick();
    setInterval(tick, 1000);
    if (!document.querySelector('main[data-live]') || !window.EventSource) return;
    var events = new EventSource('/console/events');
    var timer = null;
    function soon() { if (!timer) timer = setTimeout(function () { timer = null; refresh(); }, 100); }
    events.addEventListener('grant', soon);
    events.addEventListener('refresh', soon);
    document.documentElement.setAttribute('data-live-connected', '');
    // Changes between rendering this page and subscribing (or while the
    // connection was down) were not sent: read the page once more on (re)connect.
    events.onopen = function () {
      document.documentElement.setAttribute('data-live-connected', 'yes');
      soon();
    };
  });
})();
