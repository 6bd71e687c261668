"""Nodes of the data report: a JSON summary and a PNG of the validated preferences."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from alignops.preferences.report import ReportConfig, plot_preferences, summarise_preferences


def summarise(
    preferences: pd.DataFrame, validation_report: dict, ingestion_quarantine: pd.DataFrame, params: dict
) -> dict:
    return summarise_preferences(preferences, validation_report, ReportConfig(**params), ingestion_quarantine)


def plot(preferences: pd.DataFrame, params: dict) -> plt.Figure:
    return plot_preferences(preferences, ReportConfig(**params))
