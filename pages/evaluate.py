"""Evaluate: being built (waits for tame_core.evaluation)."""

import streamlit as st

st.info("This page is being built.")
