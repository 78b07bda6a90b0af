from tenants import tokens


def test_it_issues_tokens_in_the_contract_format() -> None:
    key_id, secret = tokens.new_key_id(), tokens.new_secret()
    token = tokens.format_token("sk", key_id, secret)
    prefix, parsed_id, parsed_secret = token.split("_")
    assert prefix == "sk" and parsed_id == key_id and parsed_secret == secret
    assert len(secret) >= 32 and all(ch in tokens.BASE62 for ch in secret)
    assert tokens.parse_token(token) == (key_id, secret)


def test_it_draws_fresh_randomness_for_every_secret() -> None:
    assert len({tokens.new_secret() for _ in range(200)}) == 200


def test_it_rejects_tokens_of_the_wrong_shape() -> None:
    good_id, good_secret = "A" * tokens.KEY_ID_LENGTH, "b" * 40
    for bad in [
        "",
        "sk",
        "sk_abc",
        f"sk_{good_id}",
        f"sk_{good_id}_short",
        f"sk_{good_id}_{good_secret}_extra",
        f"sk_{good_id[:-1]}!_{good_secret}",
        f"sk_{good_id}_{good_secret[:-1]}-",
    ]:
        assert tokens.parse_token(bad) is None, bad


def test_it_matches_only_the_right_secret_under_the_right_pepper() -> None:
    stored = tokens.hash_secret("s" * 40, "pepper-one")
    assert tokens.secret_matches("s" * 40, "pepper-one", stored)
    assert not tokens.secret_matches("t" * 40, "pepper-one", stored)
    assert not tokens.secret_matches("s" * 40, "pepper-two", stored)
    assert tokens.secret_matches("s" * 40, "pepper-one", "", "0" * 64, stored)
