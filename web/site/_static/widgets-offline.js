// Loaded on pages with saved widgets, after require.js and before the html-manager's embed-amd.js
// (see nb_ipywidgets_js in _config.yml). It points require.js at the copy of anywidget's front end
// that `make widget-js` put beside this file, so widgets render without fetching anything from a
// CDN. The html-manager asks require.js for a module first and only falls back to its CDN when that
// fails; the CDN attribute in _config.yml points the fallback at this site too.
(function () {
  var here = document.currentScript ? document.currentScript.src : window.location.href;
  var vendor = new URL("vendor/", here).href;
  window.requirejs.config({
    paths: {
      anywidget: vendor + "anywidget/index",
      // The html-manager finds its icon fonts next to the URL require.js gives this module name,
      // which would otherwise be relative to the page.
      "@jupyter-widgets/html-manager/dist": vendor + "html-manager",
    },
  });
})();
