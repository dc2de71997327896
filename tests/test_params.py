"""Tests of napari_aprnet.params.APRParameters."""
import json
import math

import numpy as np
import pytest

from napari_aprnet.params import APRParameters


def test_defaults_follow_libapr():
    p = APRParameters()
    assert (p.rel_error, p.lambda_, p.Ip_th, p.sigma_th, p.grad_th) == (0.1, 3.0, 0.0, 0.0, 0.0)
    assert (p.dx, p.dy, p.dz, p.psf) == (1.0, 1.0, 1.0, 2.0)
    assert p.neighborhood_optimization is True and p.auto_parameters is False
    assert p.psf_pixels == 2


def test_round_trip_through_dict_and_json():
    p = APRParameters(rel_error=0.05, lambda_=1.5, Ip_th=3, sigma_th=12.5, sigma_th_max=2.0, grad_th=4,
                      dx=0.5, dy=0.5, dz=2.0, psf=3, neighborhood_optimization=False, auto_parameters=True)
    d = p.to_dict()
    assert APRParameters.from_dict(d) == p
    assert APRParameters.from_dict(json.loads(json.dumps(d))) == p
    # numpy scalars (as read from HDF5 attributes) are accepted
    d_np = {k: (np.float64(v) if isinstance(v, float) else np.bool_(v)) for k, v in d.items()}
    assert APRParameters.from_dict(d_np) == p
    assert APRParameters.from_dict({"lambda": 2.0}).lambda_ == 2.0
    assert APRParameters.from_dict({}) == APRParameters()


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown APR parameter"):
        APRParameters.from_dict({"rel_eror": 0.1})


@pytest.mark.parametrize("kwargs,match", [
    ({"rel_error": 0}, r"rel_error must be in \(0, 1000\]"),
    ({"rel_error": -0.1}, r"rel_error must be in \(0, 1000\]"),
    ({"rel_error": 1e4}, r"rel_error must be in \(0, 1000\]"),
    ({"rel_error": math.nan}, "finite"),
    ({"rel_error": math.inf}, "finite"),
    ({"lambda_": -1}, r"lambda_ must be in \[0, 1e\+06\]"),
    ({"lambda_": 1e15}, r"lambda_ must be in \[0, 1e\+06\]"),
    ({"lambda_": 1e30}, r"lambda_ must be in \[0, 1e\+06\]"),
    ({"sigma_th": -1}, r"sigma_th must be in \[0, 1e\+30\]"),
    ({"sigma_th_max": 1e38}, r"sigma_th_max must be in \[0, 1e\+30\]"),
    ({"grad_th": -0.5}, r"grad_th must be in \[0, 1e\+30\]"),
    ({"Ip_th": math.nan}, "finite"),
    ({"Ip_th": -1e35}, r"Ip_th must be in \[-1e\+30, 1e\+30\]"),
    ({"dx": 0}, "spacing"),
    ({"dz": -2}, "spacing"),
    ({"dy": 1e300}, r"dy must be in \[1e-12, 1e\+12\] \(pixel spacing"),
    ({"psf": 0}, "psf"),
    ({"psf": 1e12}, r"psf must be in \(0, 100\]"),
])
def test_invalid_values_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        APRParameters(**kwargs)


@pytest.mark.parametrize("kwargs", [{"rel_error": "a"}, {"lambda_": None}, {"auto_parameters": "yes"},
                                    {"neighborhood_optimization": 0.5}])
def test_invalid_types_raise_type_error(kwargs):
    with pytest.raises(TypeError):
        APRParameters(**kwargs)


def test_spacing_in_numpy_axis_order():
    p = APRParameters(dx=1.0, dy=2.0, dz=3.0)
    assert p.spacing(2) == (2.0, 1.0)
    assert p.spacing(3) == (3.0, 2.0, 1.0)
    with pytest.raises(ValueError):
        p.spacing(4)


def test_negative_ip_th_allowed_for_signed_images():
    assert APRParameters(Ip_th=-5).Ip_th == -5.0


def test_stored_parameters_out_of_range_are_refused():
    """Parameters from a file or checkpoint go through the same bounds."""
    with pytest.raises(ValueError, match=r"lambda_ must be in \[0, 1e\+06\]"):
        APRParameters.from_dict({"lambda": 1e17})


def test_spline_set_up_is_bounded_in_c():
    """The C library refuses a smoothing so wide that its set-up would run for hours (lambda 1e17)."""
    import numpy as np

    from napari_aprnet import _native
    img = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError):
        _native.formation_grad_sigma(img, (1.0, 1.0), 1e17, 2)
