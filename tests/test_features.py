import pytest
import torch

from switchsweep.platform.errors import ConfigError
from switchsweep.trainers.evaluation.features import DigitsClassifier, digits_split, load_or_train_digits_classifier
from switchsweep.trainers.evaluation.inception import FIDInceptionV3, load_fid_inception
from switchsweep.trainers.evaluation.metrics import all_metrics, class_accuracy


def test_digits_classifier_reaches_97_percent_held_out_and_is_cached(digits_net):
    net, acc, cache = digits_net
    assert acc >= 0.97
    _, _, x_test, y_test = digits_split()
    with torch.no_grad():
        measured = (net.logits_and_features(x_test)[0].argmax(1) == y_test).float().mean().item()
    assert measured == pytest.approx(acc)
    cached, cached_acc = load_or_train_digits_classifier(cache)  # read back, not retrained
    assert cached_acc == acc
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), cached.state_dict().values()))


@pytest.mark.slow  # trains the classifier again (several seconds)
def test_corrupt_classifier_cache_is_retrained(digits_net, tmp_path, caplog):
    net, acc, cache = digits_net
    file = tmp_path / f"{DigitsClassifier.name}.pt"
    file.write_bytes((cache / file.name).read_bytes()[:1000])  # truncated
    again, again_acc = load_or_train_digits_classifier(tmp_path)
    assert "retraining" in caplog.text
    assert again_acc == acc  # deterministic training gives the same network
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    assert torch.load(file, weights_only=True)["held_out_accuracy"] == acc  # the cache was rewritten


def test_held_out_digits_score_far_better_than_noise_on_every_metric(digits_net):
    net, _, _ = digits_net
    x_train, _, x_test, _ = digits_split()
    real, _ = net.embed(x_train)
    held_f, held_p = net.embed(x_test)
    noise_f, noise_p = net.embed(torch.rand(len(x_test), 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    good, _ = all_metrics(real, held_f, held_p, kid_subset_size=200, kid_subsets=20)
    bad, _ = all_metrics(real, noise_f, noise_p, kid_subset_size=200, kid_subsets=20)
    assert good["fid"] * 10 < bad["fid"]
    assert good["kid_x1e3"] * 10 < bad["kid_x1e3"]
    assert good["inception_score"] > 2 * bad["inception_score"]
    assert good["precision"] > bad["precision"] + 0.5
    assert good["recall"] > bad["recall"] + 0.5


def test_class_accuracy_of_real_digits_follows_their_labels(digits_net):
    """Real held-out digits with their labels score the classifier's own accuracy; the same digits with
    shuffled labels score chance; samples all of one class drawn for that class score the classifier's
    accuracy on that class, drawn for another class nothing."""
    net, held_out_accuracy, _ = digits_net
    _, _, x_test, y_test = digits_split()
    _, probs = net.embed(x_test)
    assert class_accuracy(probs, y_test) == pytest.approx(held_out_accuracy)
    shuffled = y_test[torch.randperm(len(y_test), generator=torch.Generator().manual_seed(0))]
    assert abs(class_accuracy(probs, shuffled) - 0.1) < 0.05  # chance: 1 in 10 classes
    sevens = y_test == 7
    assert class_accuracy(probs[sevens], y_test[sevens]) > 0.9
    assert class_accuracy(probs[sevens], torch.full((int(sevens.sum()),), 3)) < 0.05


def test_classifier_features_are_scaled_for_the_kid_kernel(digits_net):
    """The real digits' features have a root-mean-square value of 1 (x.y/d of order 1 in KID's cubic kernel)."""
    net, _, _ = digits_net
    x_train, _, _, _ = digits_split()
    feats, _ = net.embed(x_train)
    assert feats.square().mean().sqrt().item() == pytest.approx(1.0, rel=1e-4)


def test_inception_plumbing_with_random_weights(tmp_path):
    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    grey = torch.rand(3, 1, 8, 8) * 2 - 1
    pre = FIDInceptionV3.preprocess(grey)
    assert pre.shape == (3, 3, 299, 299)
    assert torch.equal(pre[:, 0], pre[:, 2])  # grey replicated to RGB
    assert pre.min() >= -1 and pre.max() <= 1
    feats, probs = net.embed(grey, batch_size=2)  # two batches
    assert feats.shape == (3, 2048) and probs.shape == (3, 1008)
    assert torch.allclose(probs.sum(1), torch.ones(3), atol=1e-5)
    whole, _ = net.embed(grey, batch_size=3)
    assert torch.allclose(feats, whole, atol=1e-5)  # batching does not change features
    rgb = grey.expand(-1, 3, -1, -1)
    assert torch.allclose(net.embed(rgb)[0], whole, atol=1e-5)

    path = tmp_path / "fid_inception.pt"
    torch.save(net.state_dict(), path)
    loaded = load_fid_inception(path)
    assert loaded.name.startswith("inception-") and torch.allclose(loaded.embed(grey)[0], whole, atol=1e-5)


def test_inception_weights_errors_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="eval.inception_weights=.*no such file"):
        load_fid_inception(tmp_path / "missing.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ConfigError, match="eval.inception_weights=.*not FID InceptionV3 weights"):
        load_fid_inception(wrong)
    with pytest.raises(ConfigError, match="eval.inception_weights is not set"):
        load_fid_inception(None)


def test_the_cache_and_the_weights_can_live_behind_a_storage_uri(digits_net, tmp_path, monkeypatch):
    """A cluster's nodes share the evaluation cache and the Inception weights through the bucket: the same
    files, read and written through a URI (file:// here; s3:// takes the same path through pyarrow)."""
    import shutil

    from switchsweep.config.schema import DataConfig
    from switchsweep.trainers.evaluation import features

    net, acc, cache = digits_net
    bucket = tmp_path / "bucket" / "eval-cache"
    bucket.mkdir(parents=True)
    shutil.copy(cache / f"{DigitsClassifier.name}.pt", bucket)
    shared, shared_acc = load_or_train_digits_classifier(f"file://{bucket}")
    assert shared_acc == acc and all(
        torch.equal(a, b) for a, b in zip(net.state_dict().values(), shared.state_dict().values())
    )

    data = DataConfig()
    first = features.reference_features(data, net, f"file://{bucket}")  # computed, written through the URI
    assert (bucket / f"ref-{data.name}-{data.image_size}-{net.name}.pt").is_file()
    monkeypatch.setattr(features, "load_dataset", lambda data: pytest.fail("recomputed instead of read"))
    assert torch.equal(features.reference_features(data, net, f"file://{bucket}"), first)

    torch.manual_seed(0)
    weights = tmp_path / "bucket" / "fid_inception.pt"
    torch.save(FIDInceptionV3().state_dict(), weights)
    local, remote = load_fid_inception(weights), load_fid_inception(f"file://{weights}")
    assert remote.name == local.name and all(
        torch.equal(a, b) for a, b in zip(local.state_dict().values(), remote.state_dict().values())
    )
    with pytest.raises(ConfigError, match="eval.inception_weights=file://.*no such file"):
        load_fid_inception(f"file://{tmp_path}/bucket/missing.pt")
