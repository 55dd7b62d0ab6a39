// Shared by the node peers: the Chromium flags every tool gets, and the evaluated expression.
'use strict';
module.exports = {
  FLAGS: [
    '--headless',
    '--no-sandbox',
    '--disable-background-networking',
    '--disable-component-update',
    '--no-first-run',
    '--disable-sync',
    '--disable-gpu',
    '--disable-dev-shm-usage',
  ],
  JS: "({ title: document.title, elements: document.getElementsByTagName('*').length })",
};
