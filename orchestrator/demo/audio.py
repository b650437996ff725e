"""Synthetic coffee-roaster audio for the demo: background windows and first-crack windows.

Why synthetic: the demo must show a real evaluation (accuracy, a threshold sweep, a confusion
matrix) without shipping anyone's recordings, so the demo model is trained and evaluated on audio
generated here from a seed. The signal model follows what a first-crack detector hears:

- background: the drum's rumble (a low hum with harmonics, amplitude-modulated by the rotation),
  fan/airflow noise (low-passed noise with a random cutoff over a small broadband floor), and
  drum knocks and metal clanks (low thumps and ringing partials). Knocks and clanks are the hard
  negatives: loud, sudden, and in every class.
- first crack: clusters of 3-12 short broadband pops (1-5 ms exponentially decaying noise,
  high-passed, random amplitude, irregular spacing) mixed in at a random signal-to-noise ratio.
  A quarter of background windows carry one or two stray pops (a bean cracking early is not
  first crack), and some first-crack windows sit at a low SNR, so the task is learnable but not
  perfect.

numpy and the stdlib only; everything is drawn from a ``numpy.random.Generator`` so the same seed
gives the same samples (and byte-identical WAV files) on every machine.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

__all__ = [
    "DEMO_EVAL_SEED",
    "DEMO_EVAL_WINDOWS",
    "LABELS",
    "NEGATIVE",
    "POSITIVE",
    "POSITIVE_FRACTION",
    "SAMPLING_RATE",
    "WINDOW_S",
    "make_windows",
    "synth_window",
    "to_pcm16",
    "write_eval_set",
]

SAMPLING_RATE = 16000
WINDOW_S = 2.0
NEGATIVE = "no_first_crack"
POSITIVE = "first_crack"
LABELS = (NEGATIVE, POSITIVE)  # class-id order: 0, 1
POSITIVE_FRACTION = 0.25  # roughly the seed data's 20/80 imbalance
# The demo's eval set: 64 unseen windows (the model trains on seed 0), 16 of them first crack.
DEMO_EVAL_WINDOWS = 64
DEMO_EVAL_SEED = 1


def _shaped_noise(rng: np.random.Generator, n: int, gain: np.ndarray) -> np.ndarray:
    """White noise filtered in the frequency domain by ``gain`` (one value per rfft bin)."""
    spectrum = np.fft.rfft(rng.standard_normal(n)) * gain
    return np.fft.irfft(spectrum, n)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x * x)) + 1e-12)


def _rumble(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Drum and motor hum: fundamental 40-90 Hz, 2-6 harmonics, rotation amplitude modulation."""
    f0 = rng.uniform(40.0, 90.0)
    out = np.zeros_like(t)
    # Harmonic k is the k-th power of the fundamental's phasor: one complex exp, not k sines.
    fundamental = np.exp(2j * np.pi * f0 * t)
    harmonic = np.ones_like(fundamental)
    for k in range(1, int(rng.integers(3, 8))):
        harmonic *= fundamental
        amp = rng.uniform(0.5, 1.0) / k**1.5
        out += amp * (harmonic * np.exp(1j * rng.uniform(0, 2 * np.pi))).imag
    rotation = rng.uniform(0.5, 1.5)
    depth = rng.uniform(0.1, 0.5)
    return out * (1.0 + depth * np.sin(2 * np.pi * rotation * t + rng.uniform(0, 2 * np.pi)))


def _airflow(rng: np.random.Generator, n: int, freqs: np.ndarray) -> np.ndarray:
    """Fan noise: second-order low-pass with a 300-4000 Hz cutoff over a broadband floor."""
    cutoff = rng.uniform(300.0, 4000.0)
    floor = 10 ** rng.uniform(-2.5, -1.0)
    gain = 1.0 / (1.0 + (freqs / cutoff) ** 2) + floor
    return _shaped_noise(rng, n, gain)


def _knocks(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A few (Poisson, mean 1.2) drum knocks (damped 50-250 Hz thumps) and metal clanks (ringing
    0.8-4 kHz partials), at random times."""
    out = np.zeros(n)
    for _ in range(int(rng.poisson(1.2))):
        length = int(0.4 * sr)
        start = int(rng.integers(0, n))
        tt = np.arange(min(length, n - start)) / sr
        if rng.random() < 0.6:  # thump
            decay = rng.uniform(0.02, 0.12)
            event = np.sin(2 * np.pi * rng.uniform(50, 250) * tt) * np.exp(-tt / decay)
            click = rng.standard_normal(min(64, tt.size)) * np.exp(-np.arange(min(64, tt.size)) / 8)
            event[: click.size] += 0.3 * np.cumsum(click) / 8  # integrated noise: a dull attack
        else:  # clank
            decay = rng.uniform(0.03, 0.2)
            event = sum(
                np.sin(2 * np.pi * rng.uniform(800, 4000) * tt + rng.uniform(0, 6.3))
                for _ in range(int(rng.integers(2, 5)))
            ) * np.exp(-tt / decay)
        out[start : start + tt.size] += rng.uniform(0.5, 1.5) * event
    return out


def _pops(rng: np.random.Generator, n: int, sr: int, count: int, freqs: np.ndarray) -> np.ndarray:
    """``count`` bright pops, 1-5 ms each, clustered around a random centre, high-passed."""
    out = np.zeros(n)
    centre = rng.uniform(0.15, 0.85) * n
    spread = rng.uniform(0.1, 0.5) * sr  # the cluster spans ~0.1-0.5 s either side
    for _ in range(count):
        length = int(rng.uniform(0.001, 0.005) * sr)
        start = int(np.clip(centre + rng.normal(0.0, 1.0) * spread, 0, n - length - 1))
        tt = np.arange(length)
        burst = rng.standard_normal(length) * np.exp(-tt / (length / 4.0))
        out[start : start + length] += rng.lognormal(0.0, 0.5) * burst
    cutoff = rng.uniform(1000.0, 2500.0)
    high_pass = (freqs / cutoff) ** 2 / (1.0 + (freqs / cutoff) ** 2)
    return np.fft.irfft(np.fft.rfft(out) * high_pass, n)


def synth_window(rng: np.random.Generator, positive: bool, *, window_s: float = WINDOW_S,
                 sr: int = SAMPLING_RATE) -> np.ndarray:
    """One float32 mono window in [-1, 1] (already on the 16-bit grid, as a WAV reads back)."""
    n = int(round(window_s * sr))
    t = np.arange(n) / sr
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    rumble = _rumble(rng, t)
    air = _airflow(rng, n, freqs)
    background = rumble / _rms(rumble) * rng.uniform(0.3, 1.0) + air / _rms(air)
    background += _knocks(rng, n, sr) * _rms(background) * rng.uniform(2.0, 6.0)
    if positive:
        count = int(rng.integers(3, 13))
        snr_db = rng.uniform(-26.0, -6.0)
    elif rng.random() < 0.25:
        count = int(rng.integers(1, 3))  # stray pops: not yet first crack
        snr_db = rng.uniform(-26.0, -10.0)
    else:
        count, snr_db = 0, 0.0
    mix = background
    if count:
        pops = _pops(rng, n, sr, count, freqs)
        # SNR is total pop energy over total background energy across the window.
        mix = background + pops / _rms(pops) * _rms(background) * 10 ** (snr_db / 20)
    peak = float(np.max(np.abs(mix))) + 1e-12
    mix = mix / peak * rng.uniform(0.1, 0.8)
    return to_pcm16(mix).astype(np.float32) / 32768.0


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Float [-1, 1] to int16, rounded and clipped (the WAV writer's and trainer's grid)."""
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767).astype(
        np.int16)


def make_windows(n: int, seed: int, *, positive_fraction: float = POSITIVE_FRACTION,
                 window_s: float = WINDOW_S) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` windows and their class ids (1 = first crack), positives placed at random."""
    rng = np.random.default_rng(seed)
    n_pos = int(round(n * positive_fraction))
    labels = np.zeros(n, dtype=np.int64)
    labels[rng.permutation(n)[:n_pos]] = 1
    waves = [synth_window(rng, bool(y), window_s=window_s) for y in labels]
    return waves, labels


def write_wav(path: Path, waveform: np.ndarray, sr: int = SAMPLING_RATE) -> Path:
    """Write mono 16-bit PCM (stdlib ``wave``: same bytes for the same samples)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sr)
        out.writeframes(to_pcm16(waveform).astype("<i2").tobytes())
    return path


def write_eval_set(folder: Path, n: int = DEMO_EVAL_WINDOWS, seed: int = DEMO_EVAL_SEED, *,
                   window_s: float = WINDOW_S) -> list[Path]:
    """Write ``n`` labelled windows as ``folder/<label>/w<index>.wav`` and return their paths.

    The layout edge-audio teams use (one folder per label: ``first_crack``,
    ``no_first_crack``), so ``edgefleet dataset build folder`` reads it as-is. Use a different
    ``seed`` from the one the model was trained on: the set must be unseen.
    """
    if n < 1:
        raise ValueError(f"an eval set needs at least one window, got n={n}")
    folder = Path(folder)
    waves, labels = make_windows(n, seed, window_s=window_s)
    return [write_wav(folder / LABELS[y] / f"w{i:03d}.wav", w)
            for i, (w, y) in enumerate(zip(waves, labels, strict=True))]
