"""`seqjax.common.machine`: the machine named in benchmark and experiment reports."""

from __future__ import annotations

from seqjax.common.machine import cpu_model, describe_machine


def test_cpu_model_reads_the_model_name_and_falls_back_without_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\n")
    assert cpu_model(cpuinfo) == "AMD EPYC 7B13"
    fallback = cpu_model(tmp_path / "missing")
    assert fallback and fallback != "AMD EPYC 7B13"


def test_describe_machine_names_cores_and_model_on_the_cpu_platform():
    import os

    assert describe_machine("cpu") == f"{os.cpu_count()}-core CPU ({cpu_model()})"
