"""DICOM reading on the real files that ship with pydicom, plus generated broken and edge-case files.

Where pydicom decodes a file, vfa's decoded pixels must equal pydicom's own `pixel_array`, and the
final [0, 1] image must equal the DICOM grayscale pipeline computed here by hand; otherwise the
named error is asserted.
"""
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut

from vfa.io import BadImageError, read_image, read_image_info, write_dicom
from vfa.io.dicom import DICOM_EXTENSIONS, decoder_status, dicom_identifiers, gray_from_pixels

warnings.filterwarnings("ignore", module="pydicom")


def tf(name):
    return get_testdata_file(name)


def pydicom_pixels(name, index=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(tf(name))
        return ds, pydicom.pixels.pixel_array(ds, index=index)


# compressed (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE, deflate), big-endian,
# implicit VR, RGB/YBR, planar configuration 1, palette, signed, 1-bit, 32-bit
DECODABLE = [
    "CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
    "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_padded.dcm",
    "JPGExtended.dcm", "JPEG2000.dcm", "693_J2KI.dcm", "JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm",
    "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_rle.dcm",
    "SC_rgb_rle_16bit.dcm", "SC_rgb_jls_lossy_line.dcm", "SC_rgb_gdcm_KY.dcm", "SC_ybr_full_422_uncompressed.dcm",
    "GDCMJ2K_TextGBR.dcm", "ExplVR_BigEnd.dcm", "SC_rgb_small_odd_big_endian.dcm", "examples_rgb_color.dcm",
    "examples_palette.dcm", "examples_jpeg2k.dcm", "image_dfl.dcm", "liver_1frame.dcm", "rtdose_1frame.dcm",
]


@pytest.mark.parametrize("name", DECODABLE)
def test_decoded_pixels_equal_pydicom(name):
    ds, expected = pydicom_pixels(name)
    img, info = read_image_info(tf(name))
    # vfa's image is the grayscale pipeline applied to pydicom's own decoding of the same pixels
    np.testing.assert_array_equal(img, gray_from_pixels(expected, ds)[0].astype(np.float32))
    assert img.dtype == np.float32 and img.shape == expected.shape[:2]
    assert 0 <= img.min() and img.max() <= 1
    assert info["format"] == "DICOM" and info["frames"] == 1


def _window_linear(x, c, w):
    return np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)


def test_window_center_width_applied():
    ds, px = pydicom_pixels("MR_small.dcm")  # WindowCenter/Width, unsigned 16-bit, no rescale
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    np.testing.assert_allclose(read_image(tf("MR_small.dcm")), _window_linear(px.astype(float), c, w), atol=1e-6)


def test_every_transfer_syntax_gives_the_same_image():
    ref = read_image(tf("MR_small.dcm"))
    for name in ("MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_RLE.dcm",
                 "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"):
        np.testing.assert_array_equal(read_image(tf(name)), ref, err_msg=name)


def test_modality_lut_and_signed_range_without_window():
    ds, px = pydicom_pixels("CT_small.dcm")  # signed 16-bit, RescaleSlope/Intercept, no window
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    lo, hi = -32768 * slope + intercept, 32767 * slope + intercept
    expected = (px * slope + intercept - lo) / (hi - lo)
    np.testing.assert_allclose(read_image(tf("CT_small.dcm")), expected, atol=1e-6)


def test_unsigned_without_window_is_divided_by_stored_range():
    ds, px = pydicom_pixels("JPGExtended.dcm")  # 12 bits stored, no window, no rescale
    assert int(ds.BitsStored) == 12
    np.testing.assert_allclose(read_image(tf("JPGExtended.dcm")), px / 4095.0, atol=1e-6)


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_422_uncompressed.dcm", "ExplVR_BigEnd.dcm",
                                  "SC_rgb_rle_16bit.dcm"])
def test_rgb_and_ybr_become_luma(name):
    ds, rgb = pydicom_pixels(name)  # pydicom converts YBR to RGB and handles PlanarConfiguration
    expected = (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114) / (2 ** int(ds.BitsStored) - 1)
    np.testing.assert_allclose(read_image(tf(name)), expected, atol=1e-6)


def test_planar_configuration_1_file_is_covered():
    ds, _ = pydicom_pixels("ExplVR_BigEnd.dcm")
    assert int(ds.PlanarConfiguration) == 1 and not ds.file_meta.TransferSyntaxUID.is_little_endian


def test_palette_color_through_its_lut():
    ds, px = pydicom_pixels("examples_palette.dcm")
    lut = apply_color_lut(px, ds)
    rgb = lut.astype(float)
    expected = (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114) / np.iinfo(lut.dtype).max
    img, info = read_image_info(tf("examples_palette.dcm"))
    np.testing.assert_allclose(img, expected, atol=1e-6)
    assert info["photometric"] == "PALETTE COLOR"


@pytest.mark.parametrize("name, frames", [("SC_rgb_rle_2frame.dcm", 2), ("examples_ybr_color.dcm", 30),
                                          ("rtdose.dcm", 15)])
def test_multiframe_refused_unless_a_frame_is_chosen(name, frames):
    with pytest.raises(BadImageError, match=f"multi-frame DICOM \\({frames} frames\\).*--frame K"):
        read_image(tf(name))
    ds, expected = pydicom_pixels(name, index=1)
    np.testing.assert_array_equal(read_image(tf(name), frame=1), gray_from_pixels(expected, ds)[0].astype(np.float32))
    with pytest.raises(BadImageError, match=f"frame {frames} requested but the file has {frames} frames"):
        read_image(tf(name), frame=frames)


def test_frame_option_ignored_for_single_frame_files():
    np.testing.assert_array_equal(read_image(tf("MR_small.dcm"), frame=3), read_image(tf("MR_small.dcm")))


@pytest.mark.parametrize("name, reason", [
    ("MR_truncated.dcm", "cannot decode DICOM pixel data.*less than expected"),
    ("JPEG-lossy.dcm", "cannot decode DICOM pixel data \\(JPEG Extended.*python-gdcm may decode it"),
    ("rtplan.dcm", "DICOM without pixel data \\(SOP class RT Plan Storage, modality RTPLAN\\): not an image"),
    ("test-SR.dcm", "DICOM without pixel data.*SR"),
    ("waveform_ecg.dcm", "without pixel data"),
    ("meta_missing_tsyntax.dcm", "missing Rows, Columns"),
])
def test_pydicom_files_that_cannot_be_used(name, reason):
    with pytest.raises(BadImageError, match=reason) as info:
        read_image(tf(name))
    assert tf(name) in str(info.value)


def test_truncated_copies(tmp_path):
    src = open(tf("CT_small.dcm"), "rb").read()
    for n, reason in [(1000, "without pixel data.*truncated"), (30000, "less than expected"), (100, "not a")]:
        path = tmp_path / f"cut{n}.dcm"
        path.write_bytes(src[:n])
        with pytest.raises(BadImageError, match=reason):
            read_image(path)
    path = tmp_path / "cut_j2k.dcm"
    path.write_bytes(open(tf("JPEG2000.dcm"), "rb").read()[:-100])
    with pytest.raises(BadImageError, match="truncated or corrupt DICOM"):
        read_image(path)


def test_not_dicom_with_dcm_extension(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("this is a text file, not DICOM")
    with pytest.raises(BadImageError, match="not a DICOM file"):
        read_image(path)


def test_unsupported_transfer_syntaxes_name_what_would_decode_them(tmp_path, monkeypatch):
    ds = pydicom.dcmread(tf("MR_small_jp2klossless.dcm"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    ds.save_as(tmp_path / "video.dcm")
    with pytest.raises(BadImageError, match="unsupported transfer syntax MPEG2.*gdcmconv"):
        read_image(tmp_path / "video.dcm")
    raw = open(tf("MR_small.dcm"), "rb").read().replace(b"1.2.840.10008.1.2.1\x00", b"1.2.3.4.5.6.7.8.9.10", 1)
    (tmp_path / "private.dcm").write_bytes(raw)
    with pytest.raises(BadImageError, match="unsupported transfer syntax 1.2.3.4.5.6.7.8.9.10: private"):
        read_image(tmp_path / "private.dcm")
    # a decoder whose plugin is not installed: the message names the package
    from pydicom.pixels.decoders.base import Decoder

    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    assert "pylibjpeg-openjpeg" in decoder_status(pydicom.uid.JPEG2000Lossless)
    assert "pylibjpeg-libjpeg" in decoder_status(pydicom.uid.JPEGLSLossless)
    with pytest.raises(BadImageError, match="no decoder installed; pip install pylibjpeg and pylibjpeg-openjpeg"):
        read_image(tf("MR_small_jp2klossless.dcm"))


def test_decompression_bomb_and_zero_size(tmp_path, monkeypatch):
    import vfa.io.images as images

    write_dicom(tmp_path / "big.dcm", np.zeros((20, 20), np.uint8))
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    with pytest.raises(BadImageError, match="too large"):
        read_image(tmp_path / "big.dcm")
    monkeypatch.undo()
    ds = pydicom.dcmread(tmp_path / "big.dcm")
    ds.Rows = 0
    ds.save_as(tmp_path / "zero.dcm")
    with pytest.raises(BadImageError, match="zero-size"):
        read_image(tmp_path / "zero.dcm")


def _gradient(dtype, top):
    return (np.linspace(0, 1, 24 * 16).reshape(24, 16) * top).round().astype(dtype)


@pytest.mark.parametrize("bits, mono1", [(8, False), (8, True), (16, False), (16, True)])
def test_write_dicom_round_trip(tmp_path, bits, mono1):
    top = 2 ** bits - 1
    arr = _gradient(np.uint8 if bits == 8 else np.uint16, top)
    path = write_dicom(tmp_path / "x.dcm", arr, monochrome1=mono1, patient_id="PHANTOM-P00007")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == ("MONOCHROME1" if mono1 else "MONOCHROME2")
    assert int(ds.BitsStored) == bits and ds.PatientName == "PHANTOM^SYNTHETIC" and ds.ConversionType == "SYN"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    stored = ds.pixel_array
    np.testing.assert_array_equal(stored, top - arr if mono1 else arr)  # MONOCHROME1 stores inverted values
    img, info = read_image_info(path)
    np.testing.assert_allclose(img, arr / top, atol=1e-7)  # ... and reading inverts it back
    assert info["pixel_spacing"] == [0.3, 0.3] and info["bits"] == bits
    # deterministic: the same input writes the same bytes
    write_dicom(tmp_path / "y" / "x.dcm", arr, monochrome1=mono1, patient_id="PHANTOM-P00007")
    assert (tmp_path / "y" / "x.dcm").read_bytes() == path.read_bytes()


def test_same_image_as_png_and_dicom_decodes_identically(tmp_path):
    from PIL import Image

    arr = _gradient(np.uint8, 255)
    Image.fromarray(arr).save(tmp_path / "a.png")
    write_dicom(tmp_path / "a.dcm", arr)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), read_image(tmp_path / "a.dcm"))


def test_extensionless_dicom_found_by_magic(tmp_path):
    from vfa.io import is_dicom, is_image_file

    write_dicom(tmp_path / "x.dcm", _gradient(np.uint8, 255))
    (tmp_path / "IM0001").write_bytes((tmp_path / "x.dcm").read_bytes())
    (tmp_path / "1.2.840.99.1").write_bytes((tmp_path / "x.dcm").read_bytes())  # UID-named: suffix ".1"
    (tmp_path / "README").write_text("hello")
    for name in ("IM0001", "1.2.840.99.1"):
        assert is_dicom(tmp_path / name) and is_image_file(tmp_path / name)
        np.testing.assert_array_equal(read_image(tmp_path / name), read_image(tmp_path / "x.dcm"))
    assert not is_image_file(tmp_path / "README")
    assert ".dcm" in DICOM_EXTENSIONS


def _synthetic(tmp_path, arr, **attrs):
    path = write_dicom(tmp_path / "s.dcm", np.zeros((2, 2), np.uint8))
    ds = pydicom.dcmread(path)
    ds.set_pixel_data(arr, "MONOCHROME2", attrs.pop("bits_stored", arr.dtype.itemsize * 8))
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(path)
    return path


def test_signed_pixels_without_rescale(tmp_path):
    arr = np.array([[-32768, -100], [0, 32767]], np.int16)
    path = _synthetic(tmp_path, arr)
    assert pydicom.dcmread(path).PixelRepresentation == 1
    np.testing.assert_allclose(read_image(path), (arr.astype(float) + 32768) / 65535, atol=1e-6)


def test_voi_lut_sequence(tmp_path):
    from pydicom.dataset import Dataset

    arr = np.array([[0, 1], [2, 3]], np.uint8)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]
    item.add_new(0x00283006, "US", [0, 50, 100, 255])  # LUTData
    path = _synthetic(tmp_path, arr, VOILUTSequence=[item])
    img, info = read_image_info(path)
    np.testing.assert_allclose(img, np.array([[0, 50], [100, 255]]) / 255, atol=1e-6)
    assert info["voi"] == "VOI LUT"


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_functions_with_rescale(tmp_path, function):
    arr = np.arange(0, 4096, 64, dtype=np.uint16).reshape(8, 8)
    path = _synthetic(tmp_path, arr, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=1000,
                      WindowWidth=2000, VOILUTFunction=function)
    x = arr * 2.0 - 1000
    c, w = 1000.0, 2000.0
    expected = {"LINEAR": _window_linear(x, c, w), "LINEAR_EXACT": np.clip((x - c) / w + 0.5, 0, 1),
                "SIGMOID": 1 / (1 + np.exp(-4 * (x - c) / w))}[function]
    np.testing.assert_allclose(read_image(path), expected, atol=1e-5)


def test_monochrome1_window_then_invert(tmp_path):
    arr = np.array([[0, 100], [200, 255]], np.uint8)
    path = _synthetic(tmp_path, arr, PhotometricInterpretation="MONOCHROME1", WindowCenter=128, WindowWidth=256)
    np.testing.assert_allclose(read_image(path), 1 - _window_linear(arr.astype(float), 128, 256), atol=1e-6)


def test_no_identifiers_in_metadata_or_errors(tmp_path):
    arr = _gradient(np.uint8, 255)
    path = write_dicom(tmp_path / "p.dcm", arr, patient_id="SECRET-ID-12345")
    ds = pydicom.dcmread(path)
    ds.PatientName = "Doe^Jane"
    ds.StudyDate = "20240229"
    ds.save_as(path)
    _, info = read_image_info(path)
    text = repr(info)
    for value in ("SECRET-ID-12345", "Doe", "20240229"):
        assert value not in text
    ds.NumberOfFrames = 2
    ds.save_as(tmp_path / "bad.dcm")
    with pytest.raises(BadImageError) as exc:
        read_image(tmp_path / "bad.dcm")
    assert not any(v in str(exc.value) for v in ("SECRET-ID-12345", "Doe", "20240229"))
    ids = dicom_identifiers(path)  # only on request (--keep-identifiers)
    assert ids["PatientID"] == "SECRET-ID-12345" and ids["PatientName"] == "Doe^Jane"
