/* The 360° viewer of studio/ui/sphere.py: an equirectangular panorama on the inside of a sphere,
 * seen from its centre with three.js (vendored in ./three/, see its README).
 *
 * mount(frame, props, watch) is called once by the gr.HTML's js_on_load. It opens props.value, a
 * JSON {"hdr", "exr", "ldr"} of file URLs or "", and opens it again whenever the value changes,
 * disposing of the previous renderer and texture. Frames are drawn on demand (a drag, the wheel,
 * the exposure slider, a resize), never in a loop, so an idle viewer costs no CPU.
 *
 * The HDR is a half-float texture (.hdr by HDRLoader, else .exr by EXRLoader) drawn with linear
 * tone mapping: exposure 2^EV, clipped at white, then sRGB-encoded. At EV 0 it therefore matches an
 * LDR made by sRGB-encoding the radiance, and lower EVs bring back what was clipped (the sun).
 */
import * as THREE from './three/three.module.js';
import { HDRLoader } from './three/HDRLoader.js';
import { EXRLoader } from './three/EXRLoader.js';

const START_FOV = 75;          // degrees, vertical
const FOV_RANGE = [30, 100];   // degrees: the wheel zooms between these
const PITCH_LIMIT = 89;        // degrees: at ±90° the view would spin about its axis
const ZOOM_PER_PIXEL = 0.001;  // the FOV is multiplied by exp(0.001 × wheel delta): ~10 % per notch

const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));

/* The direction of the panorama at (yaw, pitch) in degrees. SphereGeometry puts texture column u
 * at (−cos 2πu, ·, sin 2πu); the sphere is scaled by (−1, 1, 1) so that, seen from inside, the
 * texture is not mirrored, which moves u to (cos 2πu, ·, sin 2πu). The panorama's column at yaw is
 * u = 0.5 + yaw / 360, so yaw 0 (the centre column) lies along −x and yaw +90° along −z, which is
 * to the right of a camera looking along −x with +y up. */
function direction(yaw, pitch) {
  const psi = THREE.MathUtils.degToRad(yaw);
  const theta = THREE.MathUtils.degToRad(pitch);
  return new THREE.Vector3(-Math.cos(psi) * Math.cos(theta), Math.sin(theta), -Math.sin(psi) * Math.cos(theta));
}

/* The texture of the panorama and its mode: the HDR (.hdr, else .exr) when one loads and the GPU
 * takes it, else the LDR image. */
async function loadPanorama(renderer, urls) {
  const gl = renderer.getContext();
  const problems = [];
  for (const [kind, Loader] of [['hdr', HDRLoader], ['exr', EXRLoader]]) {
    if (!urls[kind]) continue;
    try {
      const texture = await new Loader().setDataType(THREE.HalfFloatType).loadAsync(urls[kind]);
      // Half floats are core in WebGL 2 (which three.js needs), filtering included; an upload the
      // GPU still refuses shows as a GL error now rather than as a black sphere later.
      renderer.initTexture(texture);
      if (gl.getError() === gl.NO_ERROR) return { texture, mode: 'hdr' };
      texture.dispose();
      problems.push(`the GPU refused the ${kind} as a half-float texture`);
    } catch (error) {
      problems.push(`the ${kind} did not load (${error.message})`);
    }
  }
  if (!urls.ldr) throw new Error(problems.join('; ') || 'no image was given');
  if (problems.length) console.warn('360° viewer: showing the LDR image because', problems.join('; '));
  const texture = await new THREE.TextureLoader().loadAsync(urls.ldr);
  texture.colorSpace = THREE.SRGBColorSpace;
  return { texture, mode: 'ldr' };
}

/* A renderer, a scene and a camera showing the panorama at `urls`; the caller appends
 * view.renderer.domElement and calls view.dispose() when done. */
async function openView(urls) {
  let renderer;
  try {
    renderer = new THREE.WebGLRenderer({ preserveDrawingBuffer: true });  // kept so tests can read pixels
  } catch (error) {
    throw new Error(`this browser has no WebGL 2, which the 360° view needs (${error.message})`);
  }
  renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
  let loaded;
  try {
    loaded = await loadPanorama(renderer, urls);
  } catch (error) {
    renderer.dispose();
    renderer.forceContextLoss();
    throw error;
  }
  renderer.toneMapping = loaded.mode === 'hdr' ? THREE.LinearToneMapping : THREE.NoToneMapping;
  const geometry = new THREE.SphereGeometry(10, 96, 48);
  geometry.scale(-1, 1, 1);
  const material = new THREE.MeshBasicMaterial({ map: loaded.texture });
  const scene = new THREE.Scene();
  scene.add(new THREE.Mesh(geometry, material));
  return {
    renderer, scene, mode: loaded.mode,
    camera: new THREE.PerspectiveCamera(START_FOV, 1, 0.1, 100),
    yaw: 0, pitch: 0, fov: START_FOV, size: '',
    dispose() {
      loaded.texture.dispose();
      geometry.dispose();
      material.dispose();
      renderer.dispose();
      renderer.forceContextLoss();  // browsers keep only a few WebGL contexts alive
      renderer.domElement.remove();
    },
  };
}

export function mount(frame, props, watch) {
  const stage = frame.querySelector('.sphere-stage');
  const status = frame.querySelector('.sphere-status');
  const slider = frame.querySelector('.sphere-exposure input');
  const evText = frame.querySelector('.sphere-exposure output');
  const fullscreen = frame.querySelector('.sphere-fullscreen');
  let view = null;      // the open panorama (openView), or null
  let opens = 0;        // counts opens: a load that ends after a newer open is thrown away
  let pending = false;  // a frame is requested

  const ev = () => Number(slider.value);
  const showEv = () => { evText.textContent = `EV ${ev() < 0 ? '−' : '+'}${Math.abs(ev()).toFixed(1)}`; };
  function setState(state, text) {
    frame.dataset.state = state;
    status.textContent = text;
  }

  function render() {
    pending = false;
    const width = stage.clientWidth;
    const height = stage.clientHeight;
    if (!view || !width || !height) return;  // hidden (another tab): drawn when the resize observer sees it
    const { renderer, camera } = view;
    if (view.size !== `${width}x${height}`) {
      renderer.setSize(width, height, false);
      view.size = `${width}x${height}`;
    }
    camera.aspect = width / height;
    camera.fov = view.fov;
    camera.updateProjectionMatrix();
    camera.lookAt(direction(view.yaw, view.pitch));
    renderer.toneMappingExposure = view.mode === 'hdr' ? 2 ** ev() : 1;
    renderer.render(view.scene, camera);
    Object.assign(frame.dataset, {
      mode: view.mode, yaw: view.yaw.toFixed(2), pitch: view.pitch.toFixed(2), fov: view.fov.toFixed(2),
      ev: view.mode === 'hdr' ? ev().toFixed(1) : '0.0',
    });
  }
  function requestRender() {
    if (!pending) { pending = true; requestAnimationFrame(render); }
  }

  async function open(value) {
    const id = ++opens;
    if (view) { view.dispose(); view = null; }
    delete frame.dataset.mode;
    slider.value = '0';
    showEv();
    if (!value) { setState('empty', ''); return; }
    setState('loading', 'Loading the panorama…');
    try {
      const opened = await openView(JSON.parse(value));
      if (id !== opens) { opened.dispose(); return; }
      view = opened;
      stage.appendChild(view.renderer.domElement);
      slider.disabled = view.mode !== 'hdr';
      setState('ready', `${view.mode.toUpperCase()} · drag to look around · wheel to zoom`);
      requestRender();
    } catch (error) {
      if (id !== opens) return;
      console.error('360° viewer:', error);
      setState('error', `Could not show the panorama: ${error.message}`);
    }
  }

  // Drag to look around: the panorama follows the pointer (drag left to look right).
  let drag = null;
  stage.addEventListener('pointerdown', (event) => {
    if (!view || event.button !== 0) return;
    drag = { id: event.pointerId, x: event.clientX, y: event.clientY };
    stage.setPointerCapture(event.pointerId);
  });
  stage.addEventListener('pointermove', (event) => {
    if (!view || !drag || event.pointerId !== drag.id) return;
    const degreesPerPixel = view.fov / stage.clientHeight;
    view.yaw -= (event.clientX - drag.x) * degreesPerPixel;
    view.pitch = clamp(view.pitch + (event.clientY - drag.y) * degreesPerPixel, -PITCH_LIMIT, PITCH_LIMIT);
    drag.x = event.clientX;
    drag.y = event.clientY;
    requestRender();
  });
  const endDrag = (event) => { if (drag && event.pointerId === drag.id) drag = null; };
  stage.addEventListener('pointerup', endDrag);
  stage.addEventListener('pointercancel', endDrag);

  // The wheel zooms (down widens the view); the page does not scroll under the viewer.
  stage.addEventListener('wheel', (event) => {
    if (!view) return;
    event.preventDefault();
    const pixels = event.deltaMode === WheelEvent.DOM_DELTA_LINE ? event.deltaY * 33 : event.deltaY;
    view.fov = clamp(view.fov * Math.exp(pixels * ZOOM_PER_PIXEL), ...FOV_RANGE);
    requestRender();
  }, { passive: false });

  slider.addEventListener('input', () => { showEv(); requestRender(); });

  fullscreen.addEventListener('click', () => {
    const request = document.fullscreenElement === frame ? document.exitFullscreen() : frame.requestFullscreen();
    request.catch((error) => { status.textContent = `Full screen refused: ${error.message}`; });
  });
  document.addEventListener('fullscreenchange', () => {
    fullscreen.textContent = document.fullscreenElement === frame ? 'Exit full screen' : 'Full screen';
  });
  new ResizeObserver(requestRender).observe(stage);

  open(props.value);
  watch('value', () => open(props.value));
}
