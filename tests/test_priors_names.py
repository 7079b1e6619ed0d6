"""Pathway names next to IDs, Reactome's download formats, and the provenance a run records."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from genexflow.cli.main import app
from genexflow.errors import InputError
from genexflow.priors import build_priors, load_gene_sets, pathway_names
from genexflow.priors.bundle import GenePriors
from genexflow.priors.genesets import _data_path, gene_set_names, gene_set_provenance, provenance_tags
from genexflow.priors.names import pathway_label, read_pathway_names
from genexflow.priors.reactome import read_reactome_gmt, read_reactome_ncbi
from genexflow.training.plots import top_bar

# A FORMAT fixture in the exact layout of Reactome's downloads (ReactomePathways.gmt,
# NCBI2Reactome_All_Levels.txt, ReactomePathways.txt). Stable IDs and names are Reactome's; the member
# lists are a short illustrative subset, not Reactome's membership (no Reactome file is reachable offline).
REACTOME_GMT = (
    "Apoptosis\tR-HSA-109581\tBAX\tBCL2\tCASP3\tCASP8\tCASP9\tCYCS\tTP53\n"
    "Cell Cycle\tR-HSA-1640170\tCCNB1\tCDK1\tCDK2\tCCNE1\tRB1\tE2F1\tTP53\n"
    "Cell Cycle Checkpoints\tR-HSA-69620\tATM\tCHEK1\tCHEK2\tCDK1\tCCNB1\tTP53\n"
)
NCBI2REACTOME = "".join(
    f"{e}\t{sid}\thttps://reactome.org/PathwayBrowser/#/{sid}\t{name}\tTAS\t{sp}\n"
    for e, sid, name, sp in [
        ("581", "R-HSA-109581", "Apoptosis", "Homo sapiens"), ("596", "R-HSA-109581", "Apoptosis", "Homo sapiens"),
        ("7157", "R-HSA-109581", "Apoptosis", "Homo sapiens"), ("7157", "R-HSA-109581", "Apoptosis", "Homo sapiens"),
        ("983", "R-HSA-1640170", "Cell Cycle", "Homo sapiens"), ("12534", "R-MMU-109581", "Apoptosis", "Mus musculus"),
    ])
NAMES_TXT = "R-HSA-109581\tApoptosis\tHomo sapiens\nR-HSA-1640170\tCell Cycle\tHomo sapiens\n"
KEGG_LIST = "path:hsa04110\tCell cycle - Homo sapiens (human)\npath:hsa04115\tp53 signaling pathway - Homo sapiens (human)\n"


def test_reactome_gmt_is_keyed_by_stable_id_with_names(tmp_path):
    p = tmp_path / "ReactomePathways.gmt"
    p.write_text(REACTOME_GMT)
    sets, names = read_reactome_gmt(p)
    assert list(sets) == ["R-HSA-109581", "R-HSA-1640170", "R-HSA-69620"]
    assert names["R-HSA-69620"] == "Cell Cycle Checkpoints" and sets["R-HSA-109581"][-1] == "TP53"
    # the generic loaders recognise the layout too, gzipped or not
    gz = tmp_path / "ReactomePathways.gmt.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    assert load_gene_sets(gz) == sets
    assert gene_set_names(p) == names
    pri = build_priors(["TP53", "CDK1", "CCNB1", "ATM", "CHEK2", "BAX", "CASP3"], p, min_size=2)
    assert pri.label("R-HSA-1640170") == "R-HSA-1640170 Cell Cycle"
    prov = gene_set_provenance(p)
    assert prov["collection"] == "reactome" and "CC BY 4.0" in prov["license"]
    assert prov["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    # a plain GMT is not mistaken for Reactome's
    q = tmp_path / "plain.gmt"
    q.write_text("SET_A\thttp://x\tTP53\tMDM2\n")
    assert list(load_gene_sets(q)) == ["SET_A"] and gene_set_names(q) == {}
    assert gene_set_provenance(q)["collection"] == "file"


def test_reactome_ncbi_mapping_gives_entrez_sets_for_one_species(tmp_path):
    p = tmp_path / "NCBI2Reactome_All_Levels.txt"
    p.write_text(NCBI2REACTOME)
    sets, names = read_reactome_ncbi(p)
    assert sets == {"R-HSA-109581": ["581", "596", "7157"], "R-HSA-1640170": ["983"]}
    assert names["R-HSA-109581"] == "Apoptosis"
    assert list(read_reactome_ncbi(p, species="Mus musculus")[0]) == ["R-MMU-109581"]
    with pytest.raises(InputError, match="no pathways for species"):
        read_reactome_ncbi(p, species="Danio rerio")
    bad = tmp_path / "bad.txt"
    bad.write_text("x\ty\n")
    with pytest.raises(InputError, match="expected"):
        read_reactome_ncbi(bad)


def test_names_files_kegg_list_and_reactome_txt(tmp_path):
    k = tmp_path / "kegg.tsv"
    k.write_text(KEGG_LIST)
    assert read_pathway_names(k) == {"hsa04110": "Cell cycle", "hsa04115": "p53 signaling pathway"}
    r = tmp_path / "ReactomePathways.txt"
    r.write_text(NAMES_TXT)
    assert read_pathway_names(r)["R-HSA-1640170"] == "Cell Cycle"
    genes = load_gene_sets("kegg")["hsa04115"][:12]
    pri = build_priors(genes, "kegg", min_size=3, pathway_names=k)
    assert pri.label("hsa04115") == "hsa04115 p53 signaling pathway"
    # names survive save/load (the bundle's priors)
    again = GenePriors.load(pri.save(tmp_path / "pri"))
    assert again.names == pri.names and again.label("hsa04115") == pri.label("hsa04115")


def test_shipped_names_and_provenance():
    go = gene_set_names("go_bp")
    sets = load_gene_sets("go_bp")
    assert len(go) == len(sets)  # every GO term named, from the GMT description column
    desc = gzip.decompress(_data_path("go_bp_15_500_symbols.gmt.gz").read_bytes()).decode().split("\n", 1)[0]
    gid, d = desc.split("\t")[:2]
    assert d == f"{gid} {go[gid]}"
    assert gene_set_names("kegg") == {}  # no offline KEGG names: IDs stay bare rather than invented
    assert set(gene_set_names("progeny")) == set(load_gene_sets("progeny"))
    tags = provenance_tags("kegg", id_type="entrez")
    raw = _data_path("kegg_hsa_2011_entrez.gmt.gz").read_bytes()
    assert tags["genexflow.priors.sha256"] == hashlib.sha256(raw).hexdigest()
    assert "2011" in tags["genexflow.priors.version"]
    assert provenance_tags("/no/such/file.gmt") == {}
    # the lookup the run report uses: shipped names, plus a run's own (Reactome, user KEGG names)
    got = pathway_names([gid, "EGFR", "hsa04110", "R-HSA-1"], extra={"R-HSA-1": "x"})
    assert got == {gid: go[gid], "EGFR": "EGFR", "R-HSA-1": "x"}


def test_labels_and_plot_show_names():
    assert pathway_label("GO:1", {"GO:1": "x" * 80}).endswith("…") and len(pathway_label("GO:1", {"GO:1": "x" * 80})) < 60
    assert pathway_label("EGFR", {"EGFR": "EGFR"}) == "EGFR" and pathway_label("hsa1", {}) == "hsa1"
    s = pd.Series([3.0, 1.0, 2.0], index=["GO:0000002", "GO:0000018", "hsa00010"])
    fig = top_bar(s, "top pathways", names=gene_set_names("go_bp"))
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "GO:0000002 mitochondrial genome maintenance" in labels and "hsa00010" in labels


def test_cli_build_and_score_show_names(tmp_path):
    genes = sorted({g for v in list(load_gene_sets("go_bp").values())[:5] for g in v})[:60]
    X = pd.DataFrame(np.random.default_rng(0).normal(size=(6, len(genes))), columns=genes,
                     index=pd.Index([f"s{i}" for i in range(6)], name="sample_id"))
    X.to_csv(tmp_path / "x.csv")
    r = CliRunner().invoke(app, ["priors", "build", str(tmp_path / "x.csv"), "-s", "go_bp", "--min-size", "3",
                                 "-o", str(tmp_path / "pri")])
    assert r.exit_code == 0, r.output
    assert "largest sets: GO:" in r.output and "GO:0000002 mitochondrial genome maintenance" in (
        (tmp_path / "pri" / "priors.json").read_text().replace('": "', " "))
    r = CliRunner().invoke(app, ["priors", "score", str(tmp_path / "x.csv"), "-s", "go_bp", "--min-size", "3",
                                 "-o", str(tmp_path / "s.csv")])
    assert r.exit_code == 0, r.output
    names = pd.read_csv(tmp_path / "s.pathway_names.tsv", sep="\t", index_col=0)["name"]
    assert list(names.index) == list(pd.read_csv(tmp_path / "s.csv", index_col=0).columns)
    assert names.notna().all()
    r = CliRunner().invoke(app, ["priors", "list"])
    assert r.exit_code == 0 and "Reactome" in r.output and "5233/5233" in r.output
