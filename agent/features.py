"""AST log-mel filterbank features computed on the device in numpy (no torch, no scipy).

Why here: an Audio Spectrogram Transformer bundle's ONNX takes ``input_values`` [1, frames, bins],
not audio. To evaluate it on labelled 10 s windows the agent must turn each window into exactly
what transformers' ``ASTFeatureExtractor`` would have produced at training time, with only numpy
on a Raspberry Pi. A different feature pipeline would not crash; it would quietly cost accuracy,
so the output is pinned to the reference within 1e-4 by fixtures that transformers generated
(scripts/make_fbank_fixtures.py, tests/agent/test_features.py).

What the reference does (transformers' numpy path, taken when torchaudio is absent; read from
transformers 5.23 and unchanged in substance since 4.x), and so what this module does:

- Kaldi-style framing with ``snip_edges``: 400-sample frames every 160 samples, no centring,
  ``1 + (n - 400) // 160`` frames. These are sample counts, not milliseconds: 25 ms / 10 ms at
  16 kHz, but the reference keeps 400/160/512 at any ``sampling_rate``, and so do we.
- Per frame: subtract the frame mean, pre-emphasis 0.97 (first sample scaled by 0.03), a
  symmetric Hann window (``np.hanning(400)``, Kaldi's "hanning"; not povey: AST uses hanning),
  512-point real FFT, power spectrum.
- Kaldi mel filters (1127 ln(1 + f/700)), triangles in mel space, 20 Hz .. sampling_rate // 2,
  over the 257 FFT bins; mel energies floored at float32 epsilon, natural log, float32.
- The waveform is NOT scaled to int16 units (the reference has that line commented out).
- Pad with zeros (in the log domain, whatever ``padding_value`` says) or truncate to
  ``max_length`` frames, then, if ``do_normalize``, ``(x - mean) / (2 * std)`` in float32.

Quirks kept on purpose, because matching the reference is the point: float64 input is first cast
to float32; the spectrum is rounded through complex64 as the reference stores it; 240..399
samples give zero frames (all padding), and fewer than 240 make the reference fail, which here
is a ``bad_input`` naming the length.

Why vectorised: the reference loops over frames in Python (~1000 per 10 s window); here framing is
a strided view and one ``rfft`` covers all frames, and frames past ``max_length`` are never
computed (the reference computes then drops them). The window and mel matrix are built once per
extractor.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
import os
from typing import Any, Dict, Optional

import numpy as np

from agent.fsutil import AgentError
from agent.protocol import E_BAD_INPUT

AST_TYPE = "ASTFeatureExtractor"
FRAME_LENGTH = 400
HOP_LENGTH = 160
FFT_LENGTH = 512
PREEMPHASIS = 0.97
MEL_FLOOR = 1.192092955078125e-07  # float32 epsilon, as Kaldi and the reference floor it
MIN_FREQUENCY = 20.0
BLOCK_FRAMES = 128  # work arrays of ~0.5 MB each: cache-sized on a Pi, no per-call page faults
# ASTFeatureExtractor.__init__ defaults: a preprocessor_config.json may omit any of these.
DEFAULTS: Dict[str, Any] = {
    "feature_size": 1,
    "sampling_rate": 16000,
    "num_mel_bins": 128,
    "max_length": 1024,
    "padding_value": 0.0,
    "do_normalize": True,
    "mean": -4.2677393,
    "std": 4.5689974,
    "return_attention_mask": False,
}
# Below this many samples the reference's frame count goes negative and it raises.
MIN_SAMPLES = FRAME_LENGTH - HOP_LENGTH


def _bad(message: str, **extra: Any) -> AgentError:
    return AgentError(E_BAD_INPUT, message, **extra)


def kaldi_mel_filters(num_mel_bins: int, sampling_rate: int) -> np.ndarray:
    """[257, num_mel_bins] float64: transformers' ``mel_filter_bank(257, ..., mel_scale="kaldi",
    triangularize_in_mel_space=True)`` with the AST arguments, step for step."""
    num_bins = FFT_LENGTH // 2 + 1
    mel_min = 1127.0 * np.log(1.0 + MIN_FREQUENCY / 700.0)
    mel_max = 1127.0 * np.log(1.0 + (sampling_rate // 2) / 700.0)
    mel_freqs = np.linspace(mel_min, mel_max, num_mel_bins + 2)
    bin_width = sampling_rate / ((num_bins - 1) * 2)
    fft_mels = 1127.0 * np.log(1.0 + (bin_width * np.arange(num_bins)) / 700.0)
    diff = np.diff(mel_freqs)
    slopes = mel_freqs[np.newaxis, :] - fft_mels[:, np.newaxis]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    return np.maximum(0.0, np.minimum(down, up))


def _fft_takes_out() -> bool:
    """numpy >= 2.0 lets rfft write into a buffer; 1.x (Debian bullseye's 1.19) allocates."""
    try:
        return "out" in inspect.signature(np.fft.rfft).parameters
    except (TypeError, ValueError):
        return False


FFT_TAKES_OUT = _fft_takes_out()


class FeatureExtractor:
    """One AST filterbank configuration; call it on a mono waveform at ``sampling_rate``.

    Frames are processed in blocks of ``BLOCK_FRAMES`` through work arrays allocated once here,
    so a call touches ~2 MB that stay in cache and allocates little besides its result (a fresh
    20 MB of temporaries per call cost as much in page faults as the arithmetic). Hence one
    extractor must not be called from two threads at once.
    """

    def __init__(self, sampling_rate: int = 16000, num_mel_bins: int = 128,
                 max_length: int = 1024, do_normalize: bool = True, mean: float = -4.2677393,
                 std: float = 4.5689974, padding_value: float = 0.0) -> None:
        self.sampling_rate = sampling_rate
        self.num_mel_bins = num_mel_bins
        self.max_length = max_length
        self.do_normalize = do_normalize
        self.mean = mean
        self.std = std
        self.padding_value = padding_value  # read for completeness; the reference pads with 0
        self.window = np.hanning(FRAME_LENGTH)
        self.mel_filters = kaldi_mel_filters(num_mel_bins, sampling_rate)
        # The reference normalises a float32 array with Python floats: numpy rounds them to
        # float32 first (std * 2 is computed in double, then rounded).
        self._mean32 = np.float32(mean)
        self._scale32 = np.float32(std * 2)
        block = min(BLOCK_FRAMES, max_length)
        bins = FFT_LENGTH // 2 + 1
        self._samples = np.empty((max_length - 1) * HOP_LENGTH + FRAME_LENGTH)
        self._padded = np.zeros((block, FFT_LENGTH))  # columns 400.. stay 0: the FFT padding
        self._pre = np.empty((block, FRAME_LENGTH - 1))
        self._spec = np.empty((block, bins), dtype=np.complex128)
        self._spec32 = np.empty((block, bins), dtype=np.complex64)
        self._power = np.empty((block, bins))
        self._imag2 = np.empty((block, bins))
        self._mel = np.empty((block, num_mel_bins))

    def __repr__(self) -> str:
        return ("FeatureExtractor(sampling_rate=%d, num_mel_bins=%d, max_length=%d, "
                "do_normalize=%s, mean=%r, std=%r)" % (self.sampling_rate, self.num_mel_bins,
                                                       self.max_length, self.do_normalize,
                                                       self.mean, self.std))

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        """[1, max_length, num_mel_bins] float32, exactly what AST's ONNX ``input_values`` takes."""
        out = np.zeros((1, self.max_length, self.num_mel_bins), dtype=np.float32)
        self._log_mel_into(waveform, out[0])
        if self.do_normalize:
            out -= self._mean32
            out /= self._scale32
        return out

    def log_mel(self, waveform: np.ndarray) -> np.ndarray:
        """[frames, num_mel_bins] float32 log-mel energies of the first ``max_length`` frames
        (fewer when the clip is shorter), before padding and normalisation."""
        out = np.zeros((self.max_length, self.num_mel_bins), dtype=np.float32)
        return out[:self._log_mel_into(waveform, out)]

    def _log_mel_into(self, waveform: np.ndarray, out: np.ndarray) -> int:
        """Write the log-mel rows into ``out`` [max_length, bins]; return how many there are."""
        x = _mono(waveform)
        n = x.shape[0]
        num_frames = 1 + (n - FRAME_LENGTH) // HOP_LENGTH  # floor division, as the reference
        if num_frames < 0:
            raise _bad("waveform has %d samples (%.1f ms at %d Hz); the AST filterbank needs at "
                       "least %d (and %d for one full frame): pass a longer clip"
                       % (n, 1000.0 * n / self.sampling_rate, self.sampling_rate, MIN_SAMPLES,
                          FRAME_LENGTH), samples=n)
        num_frames = min(num_frames, self.max_length)  # later frames would be truncated away
        if num_frames == 0:
            return 0
        samples = self._samples[:(num_frames - 1) * HOP_LENGTH + FRAME_LENGTH]
        samples[...] = x[:samples.shape[0]]
        step = samples.strides[0]
        frames = np.lib.stride_tricks.as_strided(
            samples, shape=(num_frames, FRAME_LENGTH), strides=(HOP_LENGTH * step, step),
            writeable=False)
        for start in range(0, num_frames, self._padded.shape[0]):
            block = frames[start:start + self._padded.shape[0]]
            out[start:start + block.shape[0]] = self._block_log_mel(block)
        return num_frames

    def _block_log_mel(self, frames: np.ndarray) -> np.ndarray:
        """float64 [frames, bins] log-mel of one block, in the work arrays (valid until the next
        block). Operation for operation what the reference does per frame."""
        b = frames.shape[0]
        padded = self._padded[:b]
        buf = padded[:, :FRAME_LENGTH]
        np.subtract(frames, frames.mean(axis=1, keepdims=True), out=buf)  # DC offset
        pre = np.multiply(buf[:, :-1], PREEMPHASIS, out=self._pre[:b])
        buf[:, 1:] -= pre
        buf[:, 0] *= 1.0 - PREEMPHASIS
        buf *= self.window
        if FFT_TAKES_OUT:
            spectrum = np.fft.rfft(padded, axis=1, out=self._spec[:b])
        else:
            spectrum = np.fft.rfft(padded, axis=1)
        spec32 = self._spec32[:b]
        spec32[...] = spectrum  # the reference keeps the spectrum as complex64
        power = np.square(spec32.real, out=self._power[:b], dtype=np.float64)
        power += np.square(spec32.imag, out=self._imag2[:b], dtype=np.float64)
        mel = np.dot(power, self.mel_filters, out=self._mel[:b])
        np.maximum(mel, MEL_FLOOR, out=mel)
        return np.log(mel, out=mel)


def _mono(waveform: Any) -> np.ndarray:
    """1-D real samples; float64 is cast to float32 first because the reference does so."""
    x = np.asarray(waveform)
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1:
        raise _bad("waveform must be mono, 1-D (or [1, samples]); got shape %s: mix or pick one "
                   "channel first" % (list(x.shape),), shape=list(x.shape))
    if x.dtype.kind not in "fiu" or x.dtype == np.float16:
        raise _bad("waveform must be float32/float64 (or integer) samples, got %s" % x.dtype,
                   dtype=str(x.dtype))
    if x.dtype == np.float64:
        x = x.astype(np.float32)
    return x


def _int(config: Dict[str, Any], key: str, source: str, minimum: int) -> int:
    value = config.get(key, DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise _bad("%s: %s must be an integer >= %d, got %r: fix the preprocessor config"
                   % (source, key, minimum, value), key=key)
    return int(value)


def _float(config: Dict[str, Any], key: str, source: str) -> float:
    value = config.get(key, DEFAULTS[key])
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(float(value))):
        raise _bad("%s: %s must be a finite number, got %r: fix the preprocessor config"
                   % (source, key, value), key=key)
    return float(value)


def _bool(config: Dict[str, Any], key: str, source: str) -> bool:
    value = config.get(key, DEFAULTS[key])
    if not isinstance(value, bool):
        raise _bad("%s: %s must be true or false, got %r: fix the preprocessor config"
                   % (source, key, value), key=key)
    return value


def load_feature_extractor(config: Dict[str, Any],
                           source: str = "preprocessor config") -> Optional[FeatureExtractor]:
    """The extractor for an ASTFeatureExtractor ``preprocessor_config.json`` (as a dict), or None
    for any other kind (those bundles take tensors as they are). Missing keys take the
    reference's defaults; present keys of the wrong type or range are ``bad_input`` naming the
    key, because a silently different filterbank would only show up as lost accuracy."""
    if not isinstance(config, dict):
        raise _bad("%s must be a JSON object, got %s" % (source, type(config).__name__))
    if config.get("feature_extractor_type") != AST_TYPE:
        return None
    feature_size = _int(config, "feature_size", source, 1)
    if feature_size != 1:
        raise _bad("%s: feature_size must be 1 (mono audio), got %d" % (source, feature_size),
                   key="feature_size")
    sampling_rate = _int(config, "sampling_rate", source, 42)  # needs sr // 2 > 20 Hz
    std = _float(config, "std", source)
    if std == 0.0:
        raise _bad("%s: std must not be 0 (features are divided by 2 * std)" % source, key="std")
    _bool(config, "return_attention_mask", source)  # AST returns no mask either way
    return FeatureExtractor(
        sampling_rate=sampling_rate,
        num_mel_bins=_int(config, "num_mel_bins", source, 1),
        max_length=_int(config, "max_length", source, 1),
        do_normalize=_bool(config, "do_normalize", source),
        mean=_float(config, "mean", source),
        std=std,
        padding_value=_float(config, "padding_value", source),
    )


def load_from_bundle_dir(version_dir: str, config_rel: str) -> FeatureExtractor:
    """The extractor named by a manifest's ``preprocessing.config`` (a path inside the bundle
    version directory). Unlike ``load_feature_extractor`` this never returns None: the manifest
    said the bundle needs AST features, so a config that is not AST is an error."""
    path = os.path.join(version_dir, config_rel)
    try:
        with open(path, encoding="utf-8") as fh:
            config = json.load(fh)
    except OSError as exc:
        raise _bad("cannot read the preprocessor config %s: %s (rebuild and push the bundle)"
                   % (path, exc.strerror or exc), path=path) from None
    except ValueError as exc:
        raise _bad("preprocessor config %s is not valid JSON: %s" % (path, exc),
                   path=path) from None
    extractor = load_feature_extractor(config, source=path)
    if extractor is None:
        kind = config.get("feature_extractor_type") if isinstance(config, dict) else None
        raise _bad("preprocessor config %s has feature_extractor_type %r; the device computes "
                   "only %s features" % (path, kind, AST_TYPE), path=path)
    return extractor
