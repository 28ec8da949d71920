// facerec's web page: plain JavaScript, no build step, no library.
//
// Rules kept throughout: whatever came from users (names, URLs, error messages) reaches
// the page through textContent or text nodes only, never as HTML; the credential lives in
// sessionStorage (this tab, until it is closed) and travels only in an Authorization
// header, never in a URL; pictures are fetched with that header and shown from blob: URLs.
"use strict";

(() => {
  const KEY = "facerec.credential";
  const FLASH = "facerec.flash";
  const PAGE = 24;
  // Status polling: one request for the whole batch, at 1 s after a change, doubling up
  // to 16 s while nothing changes (README "Web page").
  const POLL_MIN = 1000;
  const POLL_MAX = 16000;
  const body = document.body;
  const $ = (id) => document.getElementById(id);
  let me = { required: false, scope: null, stored: false, id: null };

  // -- requests ---------------------------------------------------------------------------

  function authHeaders(headers) {
    const out = Object.assign({}, headers || {});
    const secret = sessionStorage.getItem(KEY);
    if (secret) out.Authorization = "Bearer " + secret;
    return out;
  }

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, payload) {
    const options = { method, headers: authHeaders(), credentials: "same-origin" };
    if (payload instanceof Blob) {
      options.body = payload;
    } else if (payload !== undefined) {
      options.body = JSON.stringify(payload);
      options.headers["Content-Type"] = "application/json";
    }
    const response = await fetch(path, options);
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const reason = data && typeof data.error === "string" ? data.error : response.statusText;
      throw new HttpError(response.status, reason);
    }
    return data;
  }

  // At most `n` tasks at once (pictures: the browser and rest's threads stay free).
  function limiter(n) {
    let running = 0;
    const waiting = [];
    const next = () => {
      if (running >= n || !waiting.length) return;
      running += 1;
      const [task, resolve, reject] = waiting.shift();
      task().then(resolve, reject).finally(() => {
        running -= 1;
        next();
      });
    };
    return (task) => new Promise((resolve, reject) => {
      waiting.push([task, resolve, reject]);
      next();
    });
  }
  const pictures = limiter(4);

  // Show a stored picture (thumbnail, face, photo) in `img`; a placeholder if none.
  function picture(img, path, alt) {
    img.alt = alt;
    if (!me.stored) {
      img.replaceWith(placeholder("not stored"));
      return Promise.resolve(false);
    }
    return pictures(async () => {
      const response = await fetch(path, { headers: authHeaders(), credentials: "same-origin" });
      if (!response.ok) throw new HttpError(response.status, response.statusText);
      const blob = await response.blob();
      await new Promise((resolve) => {
        img.addEventListener("load", resolve, { once: true });
        img.addEventListener("error", resolve, { once: true });
        img.src = URL.createObjectURL(blob);
      });
      return true;
    }).catch(() => {
      img.replaceWith(placeholder("no picture"));
      return false;
    });
  }

  // -- building the page --------------------------------------------------------------------

  // el("a", {href: "/ui"}, "text", child): attributes set one by one, strings as text.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  // Pictures about to leave the page give their blob: memory back.
  function releasePictures(root) {
    for (const img of root.querySelectorAll("img[src^='blob:']")) URL.revokeObjectURL(img.src);
  }

  function placeholder(text) {
    return el("span", { class: "nopic", text });
  }

  // A message above the page: a string, or a list of strings (as text) and nodes.
  function say(text, isError) {
    const box = $("message");
    box.replaceChildren(...[].concat(text));
    box.className = isError ? "message error" : "message";
  }

  function flashNext(text) {
    sessionStorage.setItem(FLASH, text);
  }

  function namesText(names) {
    return names && names.length ? names.join(", ") : "(no name)";
  }

  function imageLink(hash) {
    return "/ui/image/" + encodeURIComponent(hash);
  }

  function personLink(id) {
    return "/ui/people/" + encodeURIComponent(String(id));
  }

  function boxOf(face) {
    if (Array.isArray(face.box)) return face.box;
    return [face.top, face.right, face.bottom, face.left];
  }

  // Boxes over a shown photo, placed in percent of its natural size.
  function drawBoxes(frame, img, boxes) {
    for (const old of frame.querySelectorAll(".box")) old.remove();
    const width = img.naturalWidth;
    const height = img.naturalHeight;
    if (!width || !height) return;
    boxes.forEach((box, i) => {
      const [top, right, bottom, left] = box;
      const div = el("div", { class: "box", "data-face": i, "aria-hidden": "true" },
                     el("span", { text: String(i + 1) }));
      div.style.left = (100 * left / width) + "%";
      div.style.top = (100 * top / height) + "%";
      div.style.width = (100 * (right - left) / width) + "%";
      div.style.height = (100 * (bottom - top) / height) + "%";
      frame.append(div);
    });
  }

  function highlight(i, on) {
    const box = document.querySelector(`.box[data-face="${i}"]`);
    if (box) box.classList.toggle("active", on);
  }

  // One matching image: thumbnail, names, distance (and which of its faces).
  function matchCard(match, names) {
    const img = el("img", { class: "thumb", alt: "" });
    const detail = [`distance ${Number(match.distance).toFixed(3)}`];
    if (Number.isInteger(match.face)) detail.push(`its face ${match.face + 1}`);
    const card = el("li", { class: "card match" },
      el("a", { href: imageLink(match.hash) }, img,
         el("span", { class: "names", text: namesText(names) })),
      el("span", { class: "meta", text: detail.join(" · ") }));
    picture(img, `/image/${match.hash}/thumbnail`, "");
    return card;
  }

  // -- status of a batch, polled with backoff ----------------------------------------------

  const poller = {
    waiting: new Map(), // hash -> callbacks(status)
    delay: POLL_MIN,
    timer: null,
    due: 0,
    // A new image to watch brings the next poll forward to POLL_MIN from now, never later.
    watch(hash, callback) {
      if (!this.waiting.has(hash)) this.waiting.set(hash, []);
      const callbacks = this.waiting.get(hash);
      if (!callbacks.includes(callback)) callbacks.push(callback);
      this.delay = POLL_MIN;
      if (this.timer && this.due - Date.now() > POLL_MIN) {
        clearTimeout(this.timer);
        this.timer = null;
      }
      this.schedule();
    },
    schedule() {
      if (this.timer || !this.waiting.size) return;
      this.due = Date.now() + this.delay;
      this.timer = setTimeout(() => this.tick(), this.delay);
    },
    async tick() {
      this.timer = null;
      const hashes = [...this.waiting.keys()].slice(0, 200);
      let changed = false;
      try {
        const data = await api("POST", "/ui/api/status", { hashes });
        for (const hash of hashes) {
          const status = data.images[hash];
          if (status && status.status === "queued") continue;
          changed = true;
          const callbacks = this.waiting.get(hash) || [];
          this.waiting.delete(hash);
          for (const callback of callbacks) callback(status);
        }
      } catch (_) {
        // An outage: try again later, backing off as when nothing changed.
      }
      this.delay = changed ? POLL_MIN : Math.min(this.delay * 2, POLL_MAX);
      this.schedule();
    },
  };

  // -- gallery and uploads -------------------------------------------------------------------

  const gallery = { offset: 0, name: "", reloading: null };

  async function loadGallery() {
    const query = new URLSearchParams({ offset: gallery.offset, limit: PAGE, name: gallery.name });
    const data = await api("GET", "/ui/api/images?" + query);
    const list = $("gallery");
    releasePictures(list);
    list.replaceChildren();
    for (const image of data.images) {
      // An image still queued (uploaded elsewhere, or before a reload) updates by itself.
      if (image.status === "queued") poller.watch(image.hash, refreshGallery);
      const img = el("img", { class: "thumb", alt: "" });
      const faces = Array.isArray(image.faces) ? image.faces.length : 0;
      const status = image.status || "unknown";
      list.append(el("li", { class: "card", "data-hash": image.hash },
        el("a", { href: imageLink(image.hash) }, img,
           el("span", { class: "names", text: namesText(image.names) })),
        el("span", { class: "meta" },
           el("span", { class: "status " + status, text: status }),
           ` · ${faces} face${faces === 1 ? "" : "s"}`)));
      picture(img, `/image/${image.hash}/thumbnail`, "");
    }
    const shown = data.images.length;
    $("gallery-count").textContent = data.total
      ? `${data.total} image${data.total === 1 ? "" : "s"}${gallery.name ? " with a name containing “" + gallery.name + "”" : ""}`
      : (gallery.name ? "No image has a name containing “" + gallery.name + "”." : "No images yet.");
    $("page-text").textContent = data.total
      ? `${gallery.offset + 1}–${gallery.offset + shown} of ${data.total}` : "";
    $("prev").disabled = gallery.offset === 0;
    $("next").disabled = gallery.offset + shown >= data.total;
  }

  // Reload the gallery once after a burst of finished uploads.
  function refreshGallery() {
    if (gallery.reloading) return;
    gallery.reloading = setTimeout(() => {
      gallery.reloading = null;
      loadGallery().catch((e) => say("Could not load the images: " + e.message, true));
    }, 300);
  }

  const batch = { items: [] };
  const uploads = limiter(3);

  function updateOverall() {
    const n = batch.items.length;
    const finished = batch.items.filter((i) => i.state === "done" || i.state === "failed");
    const failed = finished.filter((i) => i.state === "failed").length;
    const sending = batch.items.filter((i) => i.state === "uploading").length;
    $("overall").max = n;
    $("overall").value = finished.length;
    $("overall-text").textContent =
      `${finished.length - failed} of ${n} done, ${failed} failed` +
      (sending ? `, ${sending} uploading` : "");
  }

  function setState(item, state, detail) {
    item.state = state;
    item.stateNode.textContent = state;
    item.stateNode.className = "status " + state;
    item.detail.textContent = detail || "";
    if (state === "done" || state === "failed") item.progress.value = 1;
    item.li.dataset.state = state;
    updateOverall();
  }

  function addItem(name, kind) {
    const progress = el("progress", { max: 1, value: 0, "aria-label": "Progress of " + name });
    if (kind === "url") progress.removeAttribute("value");
    const stateNode = el("span", { class: "status" });
    const detail = el("span", { class: "detail" });
    const label = el("span", { class: "file", text: name });
    const li = el("li", { class: "upload" }, label, progress, stateNode, detail);
    $("uploads").append(li);
    $("batch").hidden = false;
    const item = { name, li, label, progress, stateNode, detail, state: "", hash: null };
    batch.items.push(item);
    setState(item, kind === "url" ? "fetching" : "waiting");
    return item;
  }

  function accepted(item, hash) {
    item.hash = hash;
    item.progress.value = 1;
    setState(item, "queued");
    poller.watch(hash, (status) => {
      if (!status) {
        setState(item, "failed", "the image is gone (erased)");
      } else if (status.status === "done") {
        item.label.replaceChildren(el("a", { href: imageLink(hash), text: item.name }));
        setState(item, "done", `${status.faces} face${status.faces === 1 ? "" : "s"}`);
      } else {
        setState(item, "failed", status.reason || status.status);
      }
      refreshGallery();
    });
  }

  // One file through XMLHttpRequest, which (unlike fetch) reports upload progress.
  function sendFile(item, file, attempt) {
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/scan/image/" + encodeURIComponent(file.name));
      for (const [key, value] of Object.entries(authHeaders())) xhr.setRequestHeader(key, value);
      xhr.upload.addEventListener("progress", (e) => {
        if (e.lengthComputable) item.progress.value = e.loaded / e.total;
      });
      xhr.addEventListener("load", () => {
        let data = null;
        try {
          data = JSON.parse(xhr.responseText);
        } catch (_) {
          data = null;
        }
        if (xhr.status === 200 && data && data.hash) {
          accepted(item, data.hash);
        } else if (xhr.status === 503 && attempt < 4) {
          setState(item, "waiting", "the service is busy; trying again");
          setTimeout(() => sendFile(item, file, attempt + 1).then(resolve), 1000 * 2 ** attempt);
          return;
        } else {
          setState(item, "failed", (data && data.error) || `HTTP ${xhr.status}`);
        }
        resolve();
      });
      xhr.addEventListener("error", () => {
        setState(item, "failed", "the upload did not reach the service");
        resolve();
      });
      setState(item, "uploading");
      xhr.send(file);
    });
  }

  function addFiles(files) {
    for (const file of files) {
      const item = addItem(file.name, "file");
      uploads(() => sendFile(item, file, 0));
    }
  }

  async function scanUrl(url) {
    const item = addItem(url, "url");
    try {
      const data = await api("POST", "/scan/url", { url });
      accepted(item, data.hash);
    } catch (e) {
      setState(item, "failed", e.message);
    }
  }

  // Files dropped on `zone` go to take(files); the zone is highlighted while dragged over.
  function onDrop(zone, take) {
    zone.addEventListener("dragover", (e) => {
      e.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      take(e.dataTransfer.files);
    });
  }

  function initUpload() {
    const drop = $("drop");
    $("files").addEventListener("change", (e) => {
      addFiles(e.target.files);
      e.target.value = "";
    });
    onDrop(drop, addFiles);
    $("url-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const lines = $("urls").value.split(/\s+/).filter((u) => u);
      $("urls").value = "";
      for (const url of lines) uploads(() => scanUrl(url));
    });
  }

  async function galleryPage() {
    gallery.name = new URLSearchParams(location.search).get("name") || "";
    $("name-filter").value = gallery.name;
    if (me.scope === "full") initUpload();
    $("filter").addEventListener("submit", (e) => {
      e.preventDefault();
      gallery.name = $("name-filter").value.trim();
      gallery.offset = 0;
      const url = new URL(location.href);
      if (gallery.name) url.searchParams.set("name", gallery.name);
      else url.searchParams.delete("name");
      history.replaceState(null, "", url);
      loadGallery().catch((err) => say("Could not load the images: " + err.message, true));
    });
    pager(gallery, loadGallery);
    await loadGallery();
  }

  // -- one image ------------------------------------------------------------------------------

  function showPhoto(load) {
    const figure = $("photo");
    const img = $("photo-img");
    figure.hidden = false;
    return load(img).then((shown) => (shown ? img : null));
  }

  function faceItem(i, title, extra, matches) {
    const li = el("li", { class: "face", "data-face": i },
      el("h3", { text: title }), ...extra, matches);
    li.addEventListener("mouseenter", () => highlight(i, true));
    li.addEventListener("mouseleave", () => highlight(i, false));
    li.addEventListener("focusin", () => highlight(i, true));
    li.addEventListener("focusout", () => highlight(i, false));
    return li;
  }

  // Each person link says the person's name once it is known (one request a person).
  function nameThePeople(root) {
    const ids = new Set([...root.querySelectorAll("a[data-person]")].map((a) => a.dataset.person));
    for (const id of ids) {
      api("GET", "/people/" + encodeURIComponent(id)).then((person) => {
        if (!person.name) return;
        for (const a of root.querySelectorAll(`a[data-person="${CSS.escape(id)}"]`)) {
          a.textContent = person.name;
        }
      }, () => {});
    }
  }

  async function imagePage() {
    const hash = body.dataset.hash;
    let view;
    try {
      view = await api("GET", "/image/" + hash);
    } catch (e) {
      say(e.status === 404 ? "No image with this hash is known (it may have been erased)."
        : "Could not load the image: " + e.message, true);
      return;
    }
    const status = view.status || "unknown";
    $("image-status").replaceChildren("Status: ", el("span", { class: "status " + status, text: status }),
      view.reason ? ` — ${view.reason}` : "");
    $("image-names").textContent = namesText(view.names);
    document.title = namesText(view.names) + " · facerec";
    const boxes = view.faces.map(boxOf);
    const names = new Map(view.matches.map((m) => [m.hash, m.names]));
    const list = $("faces");
    list.replaceChildren();
    view.faces.forEach((face, i) => {
      const extra = [];
      if (me.stored) {
        const crop = el("img", { class: "face-crop", alt: "" });
        extra.push(crop);
        picture(crop, `/image/${hash}/face/${i}`, "");
      }
      if (face.person !== undefined && face.person !== null) {
        const link = el("a", { href: personLink(face.person), "data-person": face.person,
                               text: `Person #${face.person}` });
        extra.push(el("p", {}, link));
      }
      let matches = null;
      if (Array.isArray(face.matches)) {
        matches = face.matches.length
          ? el("ul", { class: "grid matches", "aria-label": `Images matching face ${i + 1}` },
               ...face.matches.map((m) => matchCard(m, names.get(m.hash) || [])))
          : el("p", { text: "No other image has this face." });
      }
      list.append(faceItem(i, `Face ${i + 1}`, extra, matches));
    });
    if (!view.faces.length) {
      list.append(el("li", { text: status === "done" ? "No face found." : "No faces yet." }));
    }
    nameThePeople(list);
    // Without per-face matches (an older service), the image's matches as a whole.
    const perFace = view.faces.length && view.faces.every((f) => Array.isArray(f.matches));
    $("image-matches-section").hidden = perFace || !view.matches.length;
    if (!perFace) {
      $("image-matches").replaceChildren(...view.matches.map((m) => matchCard(m, m.names)));
    }
    $("photo-caption").textContent = `${view.faces.length} face${view.faces.length === 1 ? "" : "s"} found`;
    if (me.stored) {
      const img = await showPhoto((node) => picture(node, `/image/${hash}/content`,
                                                    "Photo: " + namesText(view.names)));
      if (img) drawBoxes($("frame"), img, boxes);
    }
    if (status === "queued") poller.watch(hash, () => imagePage());
    const erase = $("erase-image");
    if (me.scope === "full" && !erase.dataset.bound) {
      erase.dataset.bound = "1";
      erase.addEventListener("click", async () => {
        if (!window.confirm(`Erase the image ${namesText(view.names)} and everything it brought? This cannot be undone.`)) return;
        try {
          await api("DELETE", "/image/" + hash);
          flashNext(`Erased the image ${namesText(view.names)}.`);
          location.assign("/ui");
        } catch (e) {
          say("Could not erase: " + e.message, true);
        }
      });
    }
  }

  // -- search by photo ----------------------------------------------------------------------

  let searchUrl = null;

  async function search(file) {
    const status = $("search-status");
    $("faces").replaceChildren();
    status.textContent = "Searching…";
    if (searchUrl) URL.revokeObjectURL(searchUrl);
    searchUrl = URL.createObjectURL(file);
    const img = $("photo-img");
    $("photo").hidden = false;
    img.alt = "The photo searched for";
    await new Promise((resolve) => {
      img.addEventListener("load", resolve, { once: true });
      img.addEventListener("error", resolve, { once: true });
      img.src = searchUrl;
    });
    let data;
    try {
      data = await api("POST", "/search", file);
    } catch (e) {
      status.textContent = "Search failed: " + e.message;
      drawBoxes($("frame"), img, []);
      return;
    }
    drawBoxes($("frame"), img, data.faces.map(boxOf));
    $("photo-caption").textContent = `${data.faces.length} face${data.faces.length === 1 ? "" : "s"} found`;
    status.textContent = `${data.faces.length} face${data.faces.length === 1 ? "" : "s"} found; nothing was stored.`;
    data.faces.forEach((face, i) => {
      const matches = face.matches.length
        ? el("ul", { class: "grid matches", "aria-label": `Images matching face ${i + 1}` },
             ...face.matches.map((m) => matchCard(m, m.names)))
        : el("p", { text: "No stored face matches this one." });
      // Who it most likely is: the person of the nearest matching face.
      const nearest = face.matches.find((m) => m.person);
      const who = nearest
        ? [el("p", { class: "who-is" }, "Nearest person: ",
              el("a", { href: personLink(nearest.person.id),
                        text: nearest.person.name || `Person #${nearest.person.id}` }))]
        : [];
      $("faces").append(faceItem(i, `Face ${i + 1}`, who, matches));
    });
  }

  function searchPage() {
    const drop = $("search-drop");
    $("search-file").addEventListener("change", (e) => {
      if (e.target.files.length) search(e.target.files[0]);
    });
    onDrop(drop, (files) => {
      if (files.length) search(files[0]);
    });
  }

  // -- people -------------------------------------------------------------------------------

  const people = { offset: 0 };

  async function loadPeople() {
    const query = new URLSearchParams({ offset: people.offset, limit: PAGE });
    const data = await api("GET", "/people?" + query);
    const list = $("people");
    releasePictures(list);
    list.replaceChildren();
    for (const person of data.people) {
      const img = el("img", { class: "face-crop", alt: "" });
      const name = person.name || `Unnamed #${person.id}`;
      list.append(el("li", { class: "card person", "data-person": person.id },
        el("a", { href: personLink(person.id) }, img, el("span", { class: "names", text: name })),
        el("span", { class: "meta", text: `${person.faces} face${person.faces === 1 ? "" : "s"}` })));
      if (person.face) picture(img, `/image/${person.face.hash}/face/${person.face.face}`, "");
    }
    const shown = data.people.length;
    $("people-count").textContent = data.total
      ? `${data.total} ${data.total === 1 ? "person" : "people"}, most faces first` : "No people yet.";
    $("page-text").textContent = data.total
      ? `${people.offset + 1}–${people.offset + shown} of ${data.total}` : "";
    $("prev").disabled = people.offset === 0;
    $("next").disabled = people.offset + shown >= data.total;
  }

  // The previous / next buttons of a paged list: state.offset moves by PAGE, then load().
  function pager(state, load) {
    const go = (offset) => {
      state.offset = offset;
      load().catch((err) => say(err.message, true));
    };
    $("prev").addEventListener("click", () => go(Math.max(0, state.offset - PAGE)));
    $("next").addEventListener("click", () => go(state.offset + PAGE));
  }

  async function peoplePage() {
    pager(people, loadPeople);
    await loadPeople();
  }

  function personTitle(person) {
    return person.name || `Unnamed person #${person.id}`;
  }

  async function loadPerson(id) {
    const person = await api("GET", "/people/" + id);
    const title = personTitle(person);
    $("person-title").textContent = title;
    document.title = title + " · facerec";
    $("person-name").value = person.name || "";
    const list = $("person-faces");
    releasePictures(list);
    list.replaceChildren();
    for (const face of person.faces) {
      const img = el("img", { class: "face-crop", alt: "" });
      const card = el("li", { class: "card", "data-hash": face.hash, "data-face": face.face },
        el("a", { href: imageLink(face.hash) }, img,
           el("span", { class: "names", text: namesText(face.names) })),
        el("span", { class: "meta", text: `face ${face.face + 1} of that image` }));
      // A checkbox to move the face out (full access only: the service refuses the rest).
      if (me.scope === "full") {
        card.append(el("label", { class: "choose" },
          el("input", { type: "checkbox", class: "choose-face",
                        "data-hash": face.hash, "data-face": face.face }),
          "Choose",
          el("span", { class: "sr-only",
                       text: ` face ${face.face + 1} of ${namesText(face.names)}` })));
      }
      list.append(card);
      picture(img, `/image/${face.hash}/face/${face.face}`, "");
    }
    updateSplit();
    return person;
  }

  // The faces chosen to move out, as the split route takes them.
  function chosenFaces() {
    return [...document.querySelectorAll("#person-faces input.choose-face:checked")]
      .map((box) => ({ hash: box.dataset.hash, face: Number(box.dataset.face) }));
  }

  function updateSplit() {
    const n = chosenFaces().length;
    $("split-button").disabled = n === 0;
    $("split-count").textContent = n ? `${n} face${n === 1 ? "" : "s"} chosen.` : "No face chosen.";
  }

  async function personPage() {
    const id = body.dataset.person;
    let person;
    try {
      person = await loadPerson(id);
    } catch (e) {
      say(e.status === 404 ? "No such person (merged or erased?)." : "Could not load: " + e.message, true);
      return;
    }
    if (me.scope !== "full") return;
    $("rename").addEventListener("submit", async (e) => {
      e.preventDefault();
      const name = $("person-name").value.trim();
      try {
        await api("PUT", "/people/" + id, { name: name || null });
        person = await loadPerson(id);
        say(name ? `Renamed to ${name}.` : "Name cleared.");
      } catch (err) {
        say("Could not rename: " + err.message, true);
      }
    });
    $("merge").addEventListener("submit", async (e) => {
      e.preventDefault();
      const other = Number($("merge-from").value);
      if (!window.confirm(`Merge person #${other} into ${person.name || "#" + id}?`)) return;
      try {
        await api("POST", `/people/${id}/merge`, { from: other });
        person = await loadPerson(id);
        $("merge-from").value = "";
        say(`Merged person #${other} into this one.`);
      } catch (err) {
        say("Could not merge: " + err.message, true);
      }
    });
    $("person-faces").addEventListener("change", (e) => {
      if (e.target.classList.contains("choose-face")) updateSplit();
    });
    $("split").addEventListener("submit", async (e) => {
      e.preventDefault();
      const faces = chosenFaces();
      const n = faces.length;
      if (!n) return;
      if (n >= person.faces.length) {
        say("A person keeps at least one face: leave one of them unchosen.", true);
        return;
      }
      const some = `${n} face${n === 1 ? "" : "s"}`;
      if (!window.confirm(`Move ${some} out of ${personTitle(person)} to a new person? The new person will never be merged with this one.`)) return;
      let data;
      try {
        data = await api("POST", `/people/${id}/split`, { faces });
      } catch (err) {
        say("Could not move the faces: " + err.message, true);
        return;
      }
      const link = el("a", { href: personLink(data.person.id), text: personTitle(data.person) });
      say([`Moved ${some} to a new person: `, link, "."]);
      try {
        person = await loadPerson(id);
      } catch (err) {
        say("Moved, but could not reload this person: " + err.message, true);
        return;
      }
      // The button is disabled again (nothing chosen): the keyboard goes on from the link.
      link.focus();
    });
    $("apart").addEventListener("submit", async (e) => {
      e.preventDefault();
      const other = Number($("apart-from").value);
      if (!window.confirm(`Mark person #${other} as never the same person as ${personTitle(person)}? They can then never be merged.`)) return;
      try {
        await api("POST", `/people/${id}/apart`, { from: other });
        $("apart-from").value = "";
        say([el("a", { href: personLink(other), text: `Person #${other}` }),
             ` is marked as never the same person as ${personTitle(person)}.`]);
      } catch (err) {
        say("Could not mark apart: " + err.message, true);
      }
    });
    $("erase-person").addEventListener("click", async () => {
      const n = person.faces.length;
      if (!window.confirm(`Erase ${person.name || "this person"}: every image holding one of their ${n} face${n === 1 ? "" : "s"}? This cannot be undone.`)) return;
      try {
        const data = await api("DELETE", "/people/" + id);
        flashNext(`Erased ${data.erased.length} image${data.erased.length === 1 ? "" : "s"}.`);
        location.assign("/ui/people");
      } catch (err) {
        say("Could not erase: " + err.message, true);
      }
    });
  }

  // -- start: who am I, then the page --------------------------------------------------------

  const PAGES = { gallery: galleryPage, image: imagePage, search: searchPage,
                  people: peoplePage, person: personPage };

  function showSignIn(error) {
    $("sign-in").hidden = false;
    $("sign-in-error").textContent = error || "";
    $("credential").focus();
  }

  async function start() {
    $("sign-in-form").addEventListener("submit", (e) => {
      e.preventDefault();
      sessionStorage.setItem(KEY, $("credential").value);
      location.reload();
    });
    $("sign-out").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      location.reload();
    });
    try {
      me = await api("GET", "/ui/api/whoami");
    } catch (e) {
      say("The service does not answer: " + e.message, true);
      return;
    }
    if (me.required && !me.scope) {
      const tried = sessionStorage.getItem(KEY);
      sessionStorage.removeItem(KEY);
      showSignIn(tried ? "That credential was not accepted." : "");
      return;
    }
    if (me.required) {
      $("who").textContent = `Signed in as ${me.id} (${me.scope === "full" ? "full access" : "read only"})`;
      $("sign-out").hidden = false;
    }
    $("not-stored").hidden = me.stored;
    for (const node of document.querySelectorAll(".needs-full")) node.hidden = me.scope !== "full";
    $("main").hidden = false;
    const flash = sessionStorage.getItem(FLASH);
    if (flash) {
      sessionStorage.removeItem(FLASH);
      say(flash);
    }
    const page = PAGES[body.dataset.page];
    try {
      if (page) await page();
      body.dataset.ready = "1";
    } catch (e) {
      say("Could not load this page: " + e.message, true);
      body.dataset.ready = "error";
    }
  }

  start();
})();
